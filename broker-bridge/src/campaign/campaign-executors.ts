import { RECORD_KEY } from '../../../common/protocol/schema.js';
import { CAMPAIGN_CODES_MAX, CAMPAIGN_LIST_MAX } from '../../../common/protocol/operator-campaigns.js';
import type { OperatorResultOf } from '../../../common/protocol/operator.js';
import type { OperatorExecutors } from '../operator/operator-command-handler.js';
import type { CampaignService, CampaignView } from './campaign-service.js';

/**
 * The operator's campaign commands on a CampaignService. Replies carry the campaign as operators see
 * it; codes that came from devices are folded into `OTHER` beyond what the reply schema allows (a key
 * pattern, CAMPAIGN_CODES_MAX per map), and reasons are cut to the schema's length.
 */
export function campaignExecutors(s: CampaignService): OperatorExecutors {
  const one = (v: CampaignView): OperatorResultOf<'campaign-status'> => ({ campaign: toWire(v) });
  return {
    'campaign-create': async (req, ctx) => {
      const { v: _v, requestId: _r, ...plan } = req;
      return one(await s.create(plan, ctx.operatorId));
    },
    'campaign-start': async (req, ctx) => one(await s.startCampaign(req.campaignId, ctx.operatorId)),
    'campaign-pause': async (req, ctx) => one(await s.pause(req.campaignId, ctx.operatorId)),
    'campaign-resume': async (req, ctx) => one(await s.resume(req.campaignId, ctx.operatorId)),
    'campaign-abort': async (req, ctx) => one(await s.abort(req.campaignId, ctx.operatorId)),
    'campaign-status': async (req) => one(s.status(req.campaignId)),
    campaigns: async () => ({
      campaigns: s
        .list()
        .slice(0, CAMPAIGN_LIST_MAX)
        .map((v) => ({
          campaignId: v.campaignId,
          kind: v.kind,
          state: v.state,
          wave: v.wave,
          waves: v.waves.length,
          devices: v.devices,
          succeeded: v.succeeded,
          failed: v.failed,
          ...(v.paused ? { paused: { ...v.paused, by: v.paused.by, reason: cut(v.paused.reason, LIST_REASON_MAX) } } : {}),
          createdAt: v.createdAt,
          createdBy: v.createdBy,
          updatedAt: v.updatedAt,
        })),
    }),
  };
}

const REASON_MAX = 512;
/** In a list, reasons are cut shorter, so CAMPAIGN_LIST_MAX rows stay well under the reply limit. */
const LIST_REASON_MAX = 160;
const cut = (s: string, max = REASON_MAX) => (s.length > max ? `${s.slice(0, max - 1)}…` : s);

function codes(m: Readonly<Record<string, number>>): Record<string, number> {
  const out = new Map<string, number>();
  for (const [k, n] of Object.entries(m).sort((a, b) => b[1] - a[1])) {
    const key = RECORD_KEY.test(k) && (out.size < CAMPAIGN_CODES_MAX - 1 || out.has(k)) ? k : 'OTHER';
    out.set(key, (out.get(key) ?? 0) + n);
  }
  return Object.fromEntries(out);
}

function toWire(v: CampaignView): OperatorResultOf<'campaign-status'>['campaign'] {
  return {
    ...v,
    waves: v.waves.map((w) => ({ ...w, codes: codes(w.codes), ...(w.reason === undefined ? {} : { reason: cut(w.reason) }) })),
    failureCodes: codes(v.failureCodes),
    ...(v.paused ? { paused: { ...v.paused, reason: cut(v.paused.reason) } } : {}),
  };
}
