import { array, int, num, object, oneOf, optional, record, str, type Schema } from './schema.js';
import { DEVICE_ID_PATTERN } from './topics.js';

/**
 * The campaign part of the operator protocol (common/protocol/operator.ts wraps these fields in its
 * envelope): `campaign-create`, `campaign-start`, `campaign-pause`, `campaign-resume`,
 * `campaign-abort`, `campaign-status` and `campaigns`. What they do: broker-bridge/src/campaign/.
 */

/** `rotate` runs; `ca-rollover` and `emergency-rekey` are refused CAMPAIGN_KIND_UNSUPPORTED by this build. */
export const CAMPAIGN_KINDS = ['rotate', 'ca-rollover', 'emergency-rekey'] as const;
export const CAMPAIGN_STATES = ['planned', 'running', 'paused', 'completed', 'aborted', 'rolled-back'] as const;
export const WAVE_GATES = ['pending', 'passed', 'tripped', 'accepted'] as const;
export const CAMPAIGN_LIMITS = {
  maxWaves: 10,
  minWindowSec: 1,
  maxWindowSec: 7 * 86_400,
  maxJitterSec: 86_400,
  minCommandTtlSec: 60,
  maxCommandTtlSec: 30 * 86_400,
  maxDeviceIds: 500,
  maxFailures: 1_000_000,
} as const;
/** Campaigns in one `campaigns` reply (newest first). */
export const CAMPAIGN_LIST_MAX = 50;
/** Distinct failure codes a status carries per wave. */
export const CAMPAIGN_CODES_MAX = 32;

export const CAMPAIGN_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
export const campaignIdField = str({ min: 1, max: 64, pattern: CAMPAIGN_ID_PATTERN });
const timestamp = int({ min: 0, max: 8_640_000_000_000_000 });
const count = int({ min: 0, max: Number.MAX_SAFE_INTEGER });
const fraction = num({ min: 0, max: 1 });
const percent = num({ min: 0.01, max: 100 });
const metadataValue = str({ min: 1, max: 256 });
const codes = record(count, { maxKeys: CAMPAIGN_CODES_MAX });

const gateFields = {
  minSuccessRate: fraction,
  maxFailures: int({ min: 0, max: CAMPAIGN_LIMITS.maxFailures }),
  minHeardFrom: fraction,
  windowSec: int({ min: CAMPAIGN_LIMITS.minWindowSec, max: CAMPAIGN_LIMITS.maxWindowSec }),
};

/** `campaign-create`: plan a campaign (nothing is sent to devices until `campaign-start`). */
export const campaignCreateFields = {
  /** Default: generated (`c-<date>-<hex>`). */
  campaignId: optional(campaignIdField),
  kind: oneOf(CAMPAIGN_KINDS),
  selector: object({
    owner: optional(metadataValue),
    model: optional(metadataValue),
    deviceIds: optional(array(str({ max: 64, pattern: DEVICE_ID_PATTERN }), { min: 1, max: CAMPAIGN_LIMITS.maxDeviceIds })),
    samplePercent: optional(percent),
  }),
  /** Cumulative percentages, rising, ending at 100. Default 1, 10, 50, 100. */
  waves: optional(array(percent, { min: 1, max: CAMPAIGN_LIMITS.maxWaves })),
  gates: optional(object({
    minSuccessRate: optional(gateFields.minSuccessRate),
    maxFailures: optional(gateFields.maxFailures),
    minHeardFrom: optional(gateFields.minHeardFrom),
    windowSec: optional(gateFields.windowSec),
  })),
  jitterSec: optional(int({ min: 0, max: CAMPAIGN_LIMITS.maxJitterSec })),
  commandTtlSec: optional(int({ min: CAMPAIGN_LIMITS.minCommandTtlSec, max: CAMPAIGN_LIMITS.maxCommandTtlSec })),
};

/** `campaign-start|pause|resume|abort|status`: one campaign by id. */
export const campaignIdFields = { campaignId: campaignIdField };

const reasonText = str({ max: 512 });

export const campaignWaveView = object({
  index: int({ min: 0, max: CAMPAIGN_LIMITS.maxWaves }),
  percent,
  size: count,
  sent: count,
  succeeded: count,
  failed: count,
  skipped: count,
  pending: count,
  codes,
  gate: oneOf(WAVE_GATES),
  dispatchedAt: optional(timestamp),
  decidedAt: optional(timestamp),
  reason: optional(reasonText),
});

const campaignSummaryFields = {
  campaignId: campaignIdField,
  kind: oneOf(CAMPAIGN_KINDS),
  state: oneOf(CAMPAIGN_STATES),
  /** The wave in progress (0-based), -1 before the start. */
  wave: int({ min: -1, max: CAMPAIGN_LIMITS.maxWaves }),
  devices: count,
  succeeded: count,
  failed: count,
  paused: optional(object({ by: str({ max: 64 }), reason: reasonText, at: timestamp })),
  createdAt: timestamp,
  createdBy: str({ max: 64 }),
  updatedAt: timestamp,
};

/** One campaign in full: the plan, every wave's progress and gate, failure codes. */
export const campaignView = object({
  ...campaignSummaryFields,
  excluded: count,
  selector: object({ owner: optional(metadataValue), model: optional(metadataValue), deviceIdCount: optional(count), samplePercent: optional(percent) }),
  gates: object(gateFields),
  jitterSec: int({ min: 0, max: CAMPAIGN_LIMITS.maxJitterSec }),
  commandTtlSec: int({ min: 0, max: CAMPAIGN_LIMITS.maxCommandTtlSec + CAMPAIGN_LIMITS.maxWindowSec + 86_400 }),
  waves: array(campaignWaveView, { max: CAMPAIGN_LIMITS.maxWaves }),
  failureCodes: codes,
});

/** A campaign in a list: its state and totals. */
export const campaignRow = object({ ...campaignSummaryFields, waves: int({ min: 0, max: CAMPAIGN_LIMITS.maxWaves }) });

export const campaignReplyFields = { campaign: campaignView };
export const campaignListFields = { campaigns: array(campaignRow, { max: CAMPAIGN_LIST_MAX }) };

export type CampaignViewSchema = typeof campaignView extends Schema<infer T> ? T : never;
