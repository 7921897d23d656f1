import { createHash } from 'node:crypto';
import { CodedError } from '../../../common/coded-error.js';
import { CAMPAIGN_KINDS, CAMPAIGN_LIMITS, CAMPAIGN_STATES, WAVE_GATES } from '../../../common/protocol/operator-campaigns.js';
import type { DeviceRecord } from '../inventory/inventory.js';

/**
 * Campaigns: one change rolled over a selected part of the fleet in waves, each wave let through only
 * when its gate holds. This module is the pure part: the records the inventory keeps, how a selector
 * picks devices, how devices fall into waves, and how a wave's gate is decided. The engine that sends
 * commands and moves campaigns along is campaign-service.ts.
 */

/**
 * `rotate`: each device in the wave gets `rotate-now`. `ca-rollover` and `emergency-rekey` are planned
 * kinds that this build does not run yet: creating one is refused with CAMPAIGN_KIND_UNSUPPORTED.
 */
export type CampaignKind = (typeof CAMPAIGN_KINDS)[number];
export const RUNNABLE_CAMPAIGN_KINDS: ReadonlySet<CampaignKind> = new Set(['rotate']);

/**
 * planned → running ⇄ paused → completed | aborted. `rolled-back` belongs to CA rollovers.
 * Active states (a campaign that still acts or may act): planned, running, paused.
 */
export type CampaignState = (typeof CAMPAIGN_STATES)[number];
export const ACTIVE_CAMPAIGN_STATES: ReadonlySet<CampaignState> = new Set(['planned', 'running', 'paused']);

/** Which devices a campaign is for; all given criteria must hold. Only enrolled, unrevoked devices are ever selected. */
export interface CampaignSelector {
  /** Metadata `owner` equals. */
  readonly owner?: string;
  /** Metadata `model` equals. */
  readonly model?: string;
  /** Exactly these device ids (those not enrolled or revoked are left out, and counted in `excluded`). */
  readonly deviceIds?: readonly string[];
  /** A deterministic sample of this percentage of what the criteria above select (1–100). */
  readonly samplePercent?: number;
}

/**
 * A wave's gate, decided from the devices' own reports (`rotated` / `rotation_failed` events that
 * arrived after their command was sent):
 * - `maxFailures`: more failures than this trips the gate at once, without waiting for the window;
 * - `minSuccessRate`: succeeded / heard from, at least this (0–1);
 * - `minHeardFrom`: devices that reported / devices in the wave, at least this (0–1);
 * - `windowSec`: the gate is decided when every device of the wave reported, or this long after the
 *   wave was sent, whichever comes first.
 */
export interface CampaignGates {
  readonly minSuccessRate: number;
  readonly maxFailures: number;
  readonly minHeardFrom: number;
  readonly windowSec: number;
}

export const DEFAULT_CAMPAIGN_WAVES: readonly number[] = [1, 10, 50, 100];
export const DEFAULT_CAMPAIGN_GATES: CampaignGates = { minSuccessRate: 0.95, maxFailures: 0, minHeardFrom: 0.9, windowSec: 600 };
export type WaveGate = (typeof WAVE_GATES)[number];

export interface CampaignWave {
  readonly index: number;
  /** Cumulative share of the campaign's devices reached once this wave is done (1–100). */
  readonly percent: number;
  /** Devices in this wave. */
  readonly size: number;
  readonly dispatchedAt?: number;
  readonly decidedAt?: number;
  readonly gate: WaveGate;
  /** Why the gate tripped (a sentence with the figures). */
  readonly reason?: string;
}

export interface CampaignRecord {
  readonly id: string;
  readonly kind: CampaignKind;
  readonly selector: CampaignSelector;
  readonly gates: CampaignGates;
  /** Each device acts at a random point within this many seconds of receiving its command. */
  readonly jitterSec: number;
  /** A device command's lifetime: a device offline longer than this ignores it. */
  readonly commandTtlSec: number;
  readonly waves: readonly CampaignWave[];
  readonly state: CampaignState;
  /** Index of the wave in progress (or the last one, once finished); -1 before the start. */
  readonly wave: number;
  /** Set while paused: who paused it (`gate` when a gate tripped) and why. */
  readonly paused?: { readonly by: string; readonly reason: string; readonly at: number };
  readonly createdAt: number;
  readonly createdBy: string;
  readonly updatedAt: number;
  /** Devices the selector named that were not selectable (not registered, not enrolled, revoked). */
  readonly excluded: number;
}

export type DeviceOutcome = 'succeeded' | 'failed' | 'skipped';

/** One device of a campaign: its wave, its command, and what came of it. */
export interface CampaignDeviceRecord {
  readonly campaignId: string;
  readonly deviceId: string;
  readonly wave: number;
  readonly commandId?: string;
  readonly sentAt?: number;
  readonly outcome?: DeviceOutcome;
  /** The failure's code (rotation_failed) or why the device was skipped. */
  readonly code?: string;
  /** The certificate serial the device reported with its outcome. */
  readonly serial?: string;
  readonly outcomeAt?: number;
}

export type CampaignErrorCode =
  | 'CAMPAIGN_NOT_FOUND'
  | 'CAMPAIGN_EXISTS'
  | 'CAMPAIGN_STATE'
  | 'CAMPAIGN_EMPTY'
  | 'CAMPAIGN_INVALID'
  | 'CAMPAIGN_KIND_UNSUPPORTED';

export class CampaignError extends CodedError<CampaignErrorCode> {}

/** Cumulative percentages, strictly increasing, ending at 100. Throws CAMPAIGN_INVALID. */
export function checkWaves(percents: readonly number[]): void {
  if (percents.length === 0 || percents.length > CAMPAIGN_LIMITS.maxWaves) throw new CampaignError('CAMPAIGN_INVALID', `1 to ${CAMPAIGN_LIMITS.maxWaves} waves, got ${percents.length}`);
  let last = 0;
  for (const p of percents) {
    if (!Number.isFinite(p) || p <= last || p > 100) throw new CampaignError('CAMPAIGN_INVALID', `wave percentages must rise strictly within (0, 100]; got ${percents.join(', ')}`);
    last = p;
  }
  if (last !== 100) throw new CampaignError('CAMPAIGN_INVALID', `the last wave must reach 100%, got ${last}%`);
}

/**
 * The timing of a plan must let devices act within a wave's window: the jitter (each device acts at a
 * random point within it) shorter than the window, and a command living at least window + jitter.
 * Throws CAMPAIGN_INVALID.
 */
export function checkTiming(windowSec: number, jitterSec: number, commandTtlSec: number): void {
  if (!Number.isInteger(jitterSec) || jitterSec < 0 || jitterSec > CAMPAIGN_LIMITS.maxJitterSec) throw new CampaignError('CAMPAIGN_INVALID', `jitterSec must be an integer within 0..${CAMPAIGN_LIMITS.maxJitterSec}`);
  if (jitterSec > 0 && jitterSec >= windowSec) throw new CampaignError('CAMPAIGN_INVALID', `a jitter of ${jitterSec} s does not fit in a window of ${windowSec} s: devices would act after their wave's gate was decided`);
  if (commandTtlSec < windowSec + jitterSec) throw new CampaignError('CAMPAIGN_INVALID', `commands must live at least window + jitter (${windowSec + jitterSec} s), got ${commandTtlSec} s`);
}

/** Throws CAMPAIGN_INVALID for gates out of bounds. */
export function checkGates(g: CampaignGates): void {
  const bad = (what: string) => {
    throw new CampaignError('CAMPAIGN_INVALID', what);
  };
  if (!(g.minSuccessRate >= 0 && g.minSuccessRate <= 1)) bad('minSuccessRate must be within 0..1');
  if (!(g.minHeardFrom >= 0 && g.minHeardFrom <= 1)) bad('minHeardFrom must be within 0..1');
  if (!Number.isInteger(g.maxFailures) || g.maxFailures < 0 || g.maxFailures > CAMPAIGN_LIMITS.maxFailures) bad(`maxFailures must be an integer within 0..${CAMPAIGN_LIMITS.maxFailures}`);
  if (!Number.isInteger(g.windowSec) || g.windowSec < CAMPAIGN_LIMITS.minWindowSec || g.windowSec > CAMPAIGN_LIMITS.maxWindowSec) bad(`windowSec must be an integer within ${CAMPAIGN_LIMITS.minWindowSec}..${CAMPAIGN_LIMITS.maxWindowSec}`);
}

const selectable = (d: DeviceRecord) => d.enrolledAt !== undefined && d.revokedAt === undefined;

/** A stable pseudo-random rank of a device within a campaign: samples and wave order depend on nothing else. */
function rank(campaignId: string, deviceId: string): string {
  return createHash('sha256').update(campaignId).update('\0').update(deviceId).digest('hex');
}

/**
 * The devices a selector picks, in wave order (a stable shuffle keyed by the campaign id, so the first
 * waves are a spread of the fleet, not the lowest ids), and how many it named that were not selectable.
 */
export function selectDevices(campaignId: string, selector: CampaignSelector, devices: readonly DeviceRecord[]): { deviceIds: string[]; excluded: number } {
  let excluded = 0;
  let pool: DeviceRecord[];
  if (selector.deviceIds) {
    const byId = new Map(devices.map((d) => [d.deviceId, d]));
    pool = [];
    for (const id of new Set(selector.deviceIds)) {
      const d = byId.get(id);
      if (d && selectable(d)) pool.push(d);
      else excluded++;
    }
  } else {
    pool = devices.filter(selectable);
  }
  pool = pool.filter((d) => (selector.owner === undefined || d.metadata['owner'] === selector.owner) && (selector.model === undefined || d.metadata['model'] === selector.model));
  const ranks = new Map(pool.map((d) => [d.deviceId, rank(campaignId, d.deviceId)]));
  const ordered = pool.map((d) => d.deviceId).sort((a, b) => (ranks.get(a)! < ranks.get(b)! ? -1 : 1));
  const take = selector.samplePercent === undefined ? ordered.length : Math.ceil((ordered.length * selector.samplePercent) / 100);
  return { deviceIds: ordered.slice(0, take), excluded };
}

/**
 * How many of `n` devices each wave takes: wave k reaches ceil(n × percent_k / 100) devices in all,
 * and every wave takes at least one device while any are left (a 1% canary of 20 devices is 1 device).
 * Waves that would be empty (more waves than devices) are dropped.
 */
export function waveSizes(n: number, percents: readonly number[]): { percent: number; size: number }[] {
  const out: { percent: number; size: number }[] = [];
  let reached = 0;
  for (const p of percents) {
    const target = Math.min(n, Math.max(reached + 1, Math.ceil((n * p) / 100)));
    if (target > reached) out.push({ percent: p, size: target - reached });
    reached = target;
  }
  // Waves dropped at the end: the last wave kept is the one that reaches every device.
  if (out.length) out[out.length - 1] = { ...out[out.length - 1]!, percent: 100 };
  return out;
}

/** What the devices of one wave reported so far. */
export interface WaveTally {
  readonly size: number;
  readonly sent: number;
  readonly succeeded: number;
  readonly failed: number;
  readonly skipped: number;
  /** failure code → devices */
  readonly codes: Readonly<Record<string, number>>;
}

export function tallyWave(devices: Iterable<CampaignDeviceRecord>, wave: number): WaveTally {
  let size = 0, sent = 0, succeeded = 0, failed = 0, skipped = 0;
  // No prototype: a code is device input, and `constructor` or `toString` must count like any other.
  const codes: Record<string, number> = Object.create(null) as Record<string, number>;
  for (const d of devices) {
    if (d.wave !== wave) continue;
    size++;
    if (d.sentAt !== undefined) sent++;
    if (d.outcome === 'succeeded') succeeded++;
    else if (d.outcome === 'failed') {
      failed++;
      const c = d.code ?? 'UNKNOWN';
      codes[c] = (codes[c] ?? 0) + 1;
    } else if (d.outcome === 'skipped') skipped++;
  }
  return { size, sent, succeeded, failed, skipped, codes };
}

export type GateDecision = { readonly decided: false } | { readonly decided: true; readonly passed: true } | { readonly decided: true; readonly passed: false; readonly reason: string };

/**
 * The gate of a dispatched wave at `now`. Skipped devices (revoked since the campaign was planned) do
 * not count. Trips at once on too many failures; otherwise waits until every device reported or the
 * window closed, then checks the success rate and the share heard from.
 */
export function decideGate(t: WaveTally, gates: CampaignGates, dispatchedAt: number, now: number): GateDecision {
  const counted = t.size - t.skipped;
  const heard = t.succeeded + t.failed;
  if (t.failed > gates.maxFailures) return { decided: true, passed: false, reason: `${t.failed} failed, more than the ${gates.maxFailures} allowed (${formatCodes(t.codes)})` };
  const windowClosed = now >= dispatchedAt + gates.windowSec * 1000;
  if (heard < counted && !windowClosed) return { decided: false };
  if (counted === 0) return { decided: true, passed: true };
  const heardShare = heard / counted;
  if (heardShare < gates.minHeardFrom) {
    return { decided: true, passed: false, reason: `heard from ${heard} of ${counted} devices within ${gates.windowSec} s (${pct(heardShare)}), below the ${pct(gates.minHeardFrom)} required` };
  }
  const rate = heard === 0 ? 1 : t.succeeded / heard;
  if (rate < gates.minSuccessRate) {
    return { decided: true, passed: false, reason: `${t.succeeded} of ${heard} devices heard from succeeded (${pct(rate)}), below the ${pct(gates.minSuccessRate)} required (${formatCodes(t.codes)})` };
  }
  return { decided: true, passed: true };
}

const pct = (x: number) => `${(x * 100).toFixed(x * 100 % 1 === 0 ? 0 : 1)}%`;

function formatCodes(codes: Readonly<Record<string, number>>): string {
  const e = Object.entries(codes);
  return e.length === 0 ? 'no failure codes' : e.map(([c, n]) => `${c}×${n}`).join(', ');
}
