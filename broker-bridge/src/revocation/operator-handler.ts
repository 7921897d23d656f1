import { CodedError } from '../../../common/coded-error.js';
import { operatorTopics, type OperatorReplyCode } from '../../../common/protocol/operator.js';
import type { Topics } from '../../../common/protocol/topics.js';
import type { EnrollmentLogger } from '../enrollment/enrollment-service.js';
import { OperatorCommandHandler } from '../operator/operator-command-handler.js';
import type { RevocationService } from './revocation-service.js';

/** The revoke command and reply topics of one operator. */
export function operatorRevokeTopics(topics: Topics, operatorId: string): { command: string; reply: string } {
  return operatorTopics(topics, operatorId, 'revoke');
}

/**
 * The operator `revoke` command (protocol: common/protocol/operator.ts): revokes a device or a serial
 * through the RevocationService and answers on the operator's reply topic. Validation, idempotency and
 * refusals are OperatorCommandHandler's; the RevocationService's codes reach the operator as they are.
 */
export class OperatorRevokeHandler extends OperatorCommandHandler {
  constructor(o: { topics: Topics; revocation: RevocationService; logger?: EnrollmentLogger }) {
    super({
      topics: o.topics,
      ...(o.logger ? { logger: o.logger } : {}),
      executors: {
        async revoke(req) {
          if ((req.deviceId === undefined) === (req.serial === undefined)) {
            throw new CodedError<OperatorReplyCode>('REVOCATION_BAD_REQUEST', 'give exactly one of deviceId and serial');
          }
          const r = req.deviceId !== undefined ? await o.revocation.revokeDevice(req.deviceId, req.reason) : await o.revocation.revokeSerial(req.serial!, req.reason);
          o.logger?.info({ deviceId: req.deviceId, serial: req.serial, reason: req.reason, serials: r.serials }, 'operator revoke: revoked');
          return { serials: [...r.serials], crlNumber: r.crlNumber.toString(), enforced: r.enforced };
        },
      },
    });
  }
}
