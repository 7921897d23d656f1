import type { Clock } from '../../../common/clock.js';
import type { Topics } from '../../../common/protocol/topics.js';
import type { EnrollmentLogger } from '../enrollment/enrollment-service.js';
import type { Inventory } from '../inventory/inventory.js';
import type { CampaignService } from '../campaign/campaign-service.js';
import { campaignExecutors } from '../campaign/campaign-executors.js';
import { reissueToken, sendDeviceCommand, type Publish } from './device-actions.js';
import { OperatorCommandHandler } from './operator-command-handler.js';
import { deviceHistory, listDeviceCertificates, listDevicesPage, showDevice } from './queries.js';

export interface OperatorHandlerOptions {
  readonly topics: Topics;
  readonly inventory: Pick<
    Inventory,
    'getDevice' | 'listDevices' | 'getCertificate' | 'listCertificates' | 'listAudit' | 'listDeviceEvents' | 'registerDevice' | 'appendAudit'
  >;
  readonly clock: Clock;
  /** The bridge's publish (retained device commands). */
  readonly publish: Publish;
  /** Lifetime of a re-issued token when the operator gives none. Default 7 days. */
  readonly tokenTtlSec?: number;
  readonly logger?: EnrollmentLogger;
  /** Serves the campaign commands when given. */
  readonly campaigns?: CampaignService;
}

/**
 * Every operator command except `revoke` (OperatorRevokeHandler serves that one, on its own filter):
 * the queries `devices`, `device`, `certificates`, `history`, and `token-reissue`, `rotate-now`,
 * `reattest`; with a campaign service, the campaign commands. Protocol: common/protocol/operator.ts.
 */
export class OperatorHandler extends OperatorCommandHandler {
  constructor(o: OperatorHandlerOptions) {
    const now = () => o.clock.now();
    super({
      topics: o.topics,
      ...(o.logger ? { logger: o.logger } : {}),
      executors: {
        devices: async (req) => listDevicesPage(o.inventory, req, now()),
        device: async (req) => showDevice(o.inventory, req.deviceId, now()),
        certificates: async (req) => listDeviceCertificates(o.inventory, req, now()),
        history: (req) => deviceHistory(o.inventory, req),
        'token-reissue': (req, ctx) => reissueToken({ inventory: o.inventory, clock: o.clock, ...(o.tokenTtlSec ? { defaultTtlSec: o.tokenTtlSec } : {}) }, req, ctx.operatorId),
        'rotate-now': (req, ctx) => sendDeviceCommand(o, 'rotate-now', req, ctx.operatorId),
        reattest: (req, ctx) => sendDeviceCommand(o, 'reattest', req, ctx.operatorId),
        ...(o.campaigns ? campaignExecutors(o.campaigns) : {}),
      },
    });
  }
}
