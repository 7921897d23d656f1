import { randomBytes } from 'node:crypto';
import type { Clock } from '../../../common/clock.js';
import { isCodedError } from '../../../common/coded-error.js';
import type { Topics } from '../../../common/protocol/topics.js';
import type { EnrollmentLogger } from '../enrollment/enrollment-service.js';
import type { AuditEventInput, CampaignStore, DeviceRecord, Inventory } from '../inventory/inventory.js';
import { newCommandId, publishDeviceCommand, withdrawDeviceCommand, type Publish } from '../operator/device-actions.js';
import {
  ACTIVE_CAMPAIGN_STATES,
  CampaignError,
  DEFAULT_CAMPAIGN_GATES,
  DEFAULT_CAMPAIGN_WAVES,
  RUNNABLE_CAMPAIGN_KINDS,
  checkGates,
  checkTiming,
  checkWaves,
  decideGate,
  selectDevices,
  tallyWave,
  waveSizes,
  type CampaignDeviceRecord,
  type CampaignGates,
  type CampaignKind,
  type CampaignRecord,
  type CampaignSelector,
  type CampaignWave,
  type WaveTally,
} from './campaign.js';

/**
 * Runs campaigns (campaign.ts): plans them from a selector, sends each wave's device commands, records
 * what the devices report (their `rotated` / `rotation_failed` events, fed in by the ingest service),
 * decides each wave's gate, and moves the campaign on or pauses it. Every step is one inventory batch
 * with its audit event, so a bridge restarted mid-wave picks up where it stood: `start()` loads the
 * running campaigns and sends again the commands of their current wave that have no outcome yet (the
 * same command ids: a device runs each once).
 *
 * Devices report through their outbox, which survives their own restarts and the bridge's absence,
 * so an outcome is not lost while the bridge is down; it arrives when the device's events are ingested.
 */
export interface CampaignServiceOptions {
  readonly store: CampaignStore & Pick<Inventory, 'listDevices' | 'getDevice' | 'getCertificate' | 'listAudit'>;
  readonly clock: Clock;
  readonly topics: Topics;
  /** The bridge's publish (retained device commands). */
  readonly publish: Publish;
  readonly logger?: EnrollmentLogger;
  /** How often running campaigns are looked at (gate windows, unsent commands). Default 1000 ms. */
  readonly tickMs?: number;
  /**
   * After `start()` (a bridge restart), no gate is decided on its window for this long (nor beyond the
   * window's own length): the devices' outboxes first deliver what they reported while the bridge was
   * away. Too many failures still trip a gate at once. Default 60 000 ms.
   */
  readonly restartGraceMs?: number;
}

/** What an operator asks for when creating a campaign (common/protocol/operator-campaigns.ts). */
export interface CampaignPlan {
  readonly campaignId?: string;
  readonly kind: CampaignKind;
  readonly selector: CampaignSelector;
  readonly waves?: readonly number[];
  readonly gates?: Partial<CampaignGates>;
  readonly jitterSec?: number;
  readonly commandTtlSec?: number;
}

export interface CampaignWaveView extends Omit<CampaignWave, 'size'>, WaveTally {
  readonly pending: number;
}

/** A campaign as operators see it (status, list, metrics). */
export interface CampaignView {
  readonly campaignId: string;
  readonly kind: CampaignKind;
  readonly state: CampaignRecord['state'];
  readonly wave: number;
  readonly devices: number;
  readonly excluded: number;
  readonly selector: { readonly owner?: string; readonly model?: string; readonly deviceIdCount?: number; readonly samplePercent?: number };
  readonly gates: CampaignGates;
  readonly jitterSec: number;
  readonly commandTtlSec: number;
  readonly waves: readonly CampaignWaveView[];
  readonly succeeded: number;
  readonly failed: number;
  readonly failureCodes: Readonly<Record<string, number>>;
  readonly paused?: CampaignRecord['paused'];
  readonly createdAt: number;
  readonly createdBy: string;
  readonly updatedAt: number;
}

/** Device events that end a device's part in a rotate campaign. */
export interface CampaignDeviceEvent {
  readonly type: string;
  readonly receivedAt: number;
  readonly details: Readonly<Record<string, string | number>>;
  /** A resend of an event the inventory holds already (its first arrival time is not known here). */
  readonly duplicate?: boolean;
}

export const DEFAULT_CAMPAIGN_JITTER_SEC = 30;
/** Commands outlive the wave's window by a day: a device offline through the window still rotates when back. */
const ttlFor = (gates: CampaignGates) => gates.windowSec + 86_400;
/** Commands published at once when a wave starts. */
const PUBLISH_CONCURRENCY = 32;

export class CampaignService {
  readonly #o: CampaignServiceOptions;
  #chain: Promise<unknown> = Promise.resolve();
  #timer: NodeJS.Timeout | undefined;
  /** `<campaign>\0<device>` of commands this process published (or saw outcomes for): not sent again. */
  readonly #published = new Set<string>();
  #stopped = false;
  /** When start() ran: a restart's grace counts from here (see restartGraceMs). */
  #startedAt = 0;
  /** `<campaign>\0<device>` of aborted campaigns' commands still to withdraw (retried on ticks). */
  readonly #withdrawals = new Map<string, { campaignId: string; deviceId: string; sentAt: number }>();

  constructor(o: CampaignServiceOptions) {
    this.#o = o;
  }

  /** Resumes the running campaigns (commands of their current wave without an outcome go out again) and starts the ticks. */
  async start(): Promise<void> {
    this.#stopped = false;
    this.#startedAt = this.#o.clock.now();
    await this.tick();
    this.#timer = setInterval(() => void this.tick().catch((err: unknown) => this.#o.logger?.error({ err }, 'campaign tick failed')), this.#o.tickMs ?? 1000);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#chain.catch(() => undefined);
  }

  /** Plans a campaign (state planned): selects its devices now and splits them into waves. */
  create(plan: CampaignPlan, operatorId: string): Promise<CampaignView> {
    return this.#exclusive(async () => {
      const store = this.#o.store;
      if (!RUNNABLE_CAMPAIGN_KINDS.has(plan.kind)) throw new CampaignError('CAMPAIGN_KIND_UNSUPPORTED', `campaigns of kind ${plan.kind} are not supported by this bridge yet; kinds: ${[...RUNNABLE_CAMPAIGN_KINDS].join(', ')}`);
      const id = plan.campaignId ?? `c-${new Date(this.#o.clock.now()).toISOString().slice(0, 10)}-${randomBytes(4).toString('hex')}`;
      if (store.getCampaign(id)) throw new CampaignError('CAMPAIGN_EXISTS', `campaign ${id} exists`);
      const percents = plan.waves ?? DEFAULT_CAMPAIGN_WAVES;
      checkWaves(percents);
      const gates: CampaignGates = { ...DEFAULT_CAMPAIGN_GATES, ...plan.gates };
      checkGates(gates);
      const { deviceIds, excluded } = selectDevices(id, plan.selector, store.listDevices());
      if (deviceIds.length === 0) throw new CampaignError('CAMPAIGN_EMPTY', `the selector picks no enrolled, unrevoked device${excluded ? ` (${excluded} named were not selectable)` : ''}`);
      const sizes = waveSizes(deviceIds.length, percents);
      const now = this.#o.clock.now();
      const waves: CampaignWave[] = sizes.map((w, index) => ({ index, percent: w.percent, size: w.size, gate: 'pending' }));
      const devices: CampaignDeviceRecord[] = [];
      let next = 0;
      for (const w of waves) for (let i = 0; i < w.size; i++) devices.push({ campaignId: id, deviceId: deviceIds[next++]!, wave: w.index });
      const jitterSec = plan.jitterSec ?? Math.min(DEFAULT_CAMPAIGN_JITTER_SEC, Math.floor(gates.windowSec / 4));
      const commandTtlSec = plan.commandTtlSec ?? ttlFor(gates);
      checkTiming(gates.windowSec, jitterSec, commandTtlSec);
      const campaign: CampaignRecord = {
        id,
        kind: plan.kind,
        selector: plan.selector,
        gates,
        jitterSec,
        commandTtlSec,
        waves,
        state: 'planned',
        wave: -1,
        createdAt: now,
        createdBy: operatorId,
        updatedAt: now,
        excluded,
      };
      await store.saveCampaign(campaign, devices, [this.#audit(campaign, 'campaign.created', operatorId, { devices: devices.length, waves: waves.map((w) => w.size).join('/') })], 'new');
      this.#o.logger?.info({ campaign: id, kind: plan.kind, devices: devices.length, waves: waves.length, operator: operatorId }, 'campaign created');
      return this.#view(campaign);
    });
  }

  /** planned → running: the first wave's commands go out. */
  startCampaign(id: string, operatorId: string): Promise<CampaignView> {
    return this.#exclusive(async () => {
      const c = this.#require(id, ['planned']);
      const started = await this.#dispatch({ ...c, state: 'running' }, 0, [this.#audit(c, 'campaign.started', operatorId)]);
      return this.#view(started);
    });
  }

  /** running → paused: no further wave starts (commands already sent stay; their outcomes are still recorded). */
  pause(id: string, operatorId: string): Promise<CampaignView> {
    return this.#exclusive(async () => {
      const c = this.#require(id, ['running']);
      const now = this.#o.clock.now();
      const paused: CampaignRecord = { ...c, state: 'paused', paused: { by: operatorId, reason: 'paused by the operator', at: now }, updatedAt: now };
      await this.#o.store.saveCampaign(paused, [], [this.#audit(c, 'campaign.paused', operatorId, { wave: c.wave })], 'existing');
      return this.#view(paused);
    });
  }

  /**
   * paused → running. A wave whose gate tripped is accepted by the operator (gate `accepted`) and the
   * next wave starts; a wave paused by the operator before its gate was decided goes on being decided.
   */
  resume(id: string, operatorId: string): Promise<CampaignView> {
    return this.#exclusive(async () => {
      const c = this.#require(id, ['paused']);
      const now = this.#o.clock.now();
      const { paused: _, ...rest } = c;
      const current = c.waves[c.wave]!;
      if (current.gate === 'tripped') {
        const waves = c.waves.map((w) => (w.index === c.wave ? { ...w, gate: 'accepted' as const } : w));
        const audit = [this.#audit(c, 'campaign.resumed', operatorId, { wave: c.wave, accepted: true })];
        const next = { ...rest, state: 'running' as const, waves, updatedAt: now };
        if (c.wave + 1 >= c.waves.length) return this.#view(await this.#complete(next, audit));
        return this.#view(await this.#dispatch(next, c.wave + 1, audit));
      }
      const running: CampaignRecord = { ...rest, state: 'running', updatedAt: now };
      await this.#o.store.saveCampaign(running, [], [this.#audit(c, 'campaign.resumed', operatorId, { wave: c.wave, accepted: false })], 'existing');
      return this.#view(await this.#advance(running));
    });
  }

  /**
   * → aborted, from planned, running or paused: no further wave starts, and the retained commands of
   * devices that have not reported are withdrawn (a device that received its command already may still act).
   */
  abort(id: string, operatorId: string): Promise<CampaignView> {
    return this.#exclusive(async () => {
      const c = this.#require(id, ['planned', 'running', 'paused']);
      const now = this.#o.clock.now();
      const { paused: _, ...rest } = c;
      const aborted: CampaignRecord = { ...rest, state: 'aborted', updatedAt: now };
      const open = this.#o.store.listCampaignDevices(id).filter((d) => d.sentAt !== undefined && d.outcome === undefined);
      await this.#o.store.saveCampaign(aborted, [], [this.#audit(c, 'campaign.aborted', operatorId, { wave: c.wave, unanswered: open.length })], 'existing');
      this.#forget(id);
      for (const d of open) this.#withdrawals.set(key(id, d.deviceId), { campaignId: id, deviceId: d.deviceId, sentAt: d.sentAt! });
      await this.#retryWithdrawals();
      this.#o.logger?.info({ campaign: id, operator: operatorId, withdrawn: open.length }, 'campaign aborted');
      return this.#view(aborted);
    });
  }

  status(id: string): CampaignView {
    const c = this.#o.store.getCampaign(id);
    if (!c) throw new CampaignError('CAMPAIGN_NOT_FOUND', `no campaign ${id}`);
    return this.#view(c);
  }

  /** Every campaign, newest first. */
  list(): CampaignView[] {
    return this.#o.store
      .listCampaigns()
      .sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? -1 : 1))
      .map((c) => this.#view(c));
  }

  /**
   * A device event as ingested. `rotated` is a success (final); `rotation_failed` a failure (a later
   * `rotated` still turns it into a success). Only events that arrived after the device's command was
   * sent count. Decides the gate at once when this settles the wave.
   */
  onDeviceEvent(deviceId: string, e: CampaignDeviceEvent): Promise<void> {
    if (e.type !== 'rotated' && e.type !== 'rotation_failed') return Promise.resolve();
    const store = this.#o.store;
    const concerned = store.listCampaigns().filter((c) => c.kind === 'rotate' && (c.state === 'running' || c.state === 'paused') && store.getCampaignDevice(c.id, deviceId)?.sentAt !== undefined);
    if (concerned.length === 0) return Promise.resolve();
    return this.#exclusive(async () => {
      for (const seen of concerned) {
        const c = store.getCampaign(seen.id)!;
        const d = store.getCampaignDevice(c.id, deviceId)!;
        if (d.sentAt === undefined || d.outcome === 'succeeded' || d.outcome === 'skipped' || !this.#answers(deviceId, d.sentAt, e)) continue;
        const serial = typeof e.details['serial'] === 'string' ? e.details['serial'] : undefined;
        const updated: CampaignDeviceRecord =
          e.type === 'rotated'
            ? { ...withoutOutcome(d), outcome: 'succeeded', outcomeAt: e.receivedAt, ...(serial ? { serial } : {}) }
            : { ...withoutOutcome(d), outcome: 'failed', outcomeAt: e.receivedAt, code: String(e.details['code'] ?? 'UNKNOWN').slice(0, 64), ...(serial ? { serial } : {}) };
        await store.saveCampaign({ ...c, updatedAt: this.#o.clock.now() }, [updated], [], 'existing');
        this.#published.add(key(c.id, deviceId));
        if (c.state === 'running') await this.#advance(store.getCampaign(c.id)!);
      }
    });
  }

  /**
   * Whether a device's report answers the campaign's command sent at `sentAt` (bridge clock). The
   * certificate a report names says when it was issued, by the bridge's clock: `rotated` names the
   * new one, `rotation_failed` the refused one (`previousSerial`) when one was issued. Only a failure
   * refused before any certificate (by the fleet) goes by its arrival, and then only a first arrival:
   * an old report resent from an outbox is not taken for an answer.
   */
  #answers(deviceId: string, sentAt: number, e: CampaignDeviceEvent): boolean {
    const named = e.type === 'rotated' ? e.details['serial'] : e.details['previousSerial'];
    if (typeof named === 'string') {
      const cert = this.#o.store.getCertificate(named);
      return cert !== undefined && cert.deviceId === deviceId && cert.issuedAt >= sentAt;
    }
    return e.type === 'rotation_failed' && !e.duplicate && e.receivedAt >= sentAt;
  }

  /**
   * Sends commands this process has not sent (after a restart, a failed publish), retries withdrawals,
   * then decides gates whose window closed.
   */
  tick(): Promise<void> {
    return this.#exclusive(async () => {
      if (this.#stopped) return;
      await this.#retryWithdrawals();
      for (const c of this.#o.store.listCampaigns()) {
        if (c.state !== 'running') continue;
        await this.#sendUnsent(c);
        await this.#advance(c);
      }
    });
  }

  /** Decides the current wave's gate if it can be decided, then starts the next wave, completes, or pauses. */
  async #advance(c: CampaignRecord): Promise<CampaignRecord> {
    const w = c.waves[c.wave];
    if (!w || w.dispatchedAt === undefined || w.gate !== 'pending') return c;
    const now = this.#o.clock.now();
    // Devices revoked since their command went out will not report: they leave the wave's count.
    const revoked = this.#o.store
      .listCampaignDevices(c.id)
      .filter((d) => d.wave === c.wave && d.outcome === undefined && this.#o.store.getDevice(d.deviceId)?.revokedAt !== undefined)
      .map((d): CampaignDeviceRecord => ({ ...d, outcome: 'skipped', code: 'DEVICE_REVOKED', outcomeAt: now }));
    if (revoked.length) await this.#o.store.saveCampaign({ ...c, updatedAt: now }, revoked, [], 'existing');
    const tally = tallyWave(this.#o.store.listCampaignDevices(c.id), c.wave);
    // Within a restart's grace the window is not yet closed: reports held in outboxes are still coming.
    const windowMs = c.gates.windowSec * 1000;
    const graceEnd = this.#startedAt + Math.min(this.#o.restartGraceMs ?? 60_000, windowMs);
    const d = decideGate(tally, c.gates, Math.max(w.dispatchedAt, graceEnd - windowMs), now);
    if (!d.decided) return c;
    if (!d.passed) {
      const waves = c.waves.map((x) => (x.index === c.wave ? { ...x, gate: 'tripped' as const, decidedAt: now, reason: d.reason } : x));
      const paused: CampaignRecord = { ...c, state: 'paused', waves, paused: { by: 'gate', reason: `wave ${c.wave + 1} gate tripped: ${d.reason}`, at: now }, updatedAt: now };
      await this.#o.store.saveCampaign(paused, [], [this.#audit(c, 'campaign.gate-tripped', 'gate', { wave: c.wave, reason: d.reason.slice(0, 250), succeeded: tally.succeeded, failed: tally.failed })], 'existing');
      this.#o.logger?.warn({ campaign: c.id, wave: c.wave, reason: d.reason }, 'campaign gate tripped; campaign paused');
      return paused;
    }
    const waves = c.waves.map((x) => (x.index === c.wave ? { ...x, gate: 'passed' as const, decidedAt: now } : x));
    const audit = [this.#audit(c, 'campaign.wave-passed', 'gate', { wave: c.wave, succeeded: tally.succeeded, failed: tally.failed })];
    const passed = { ...c, waves, updatedAt: now };
    if (c.wave + 1 >= c.waves.length) return this.#complete(passed, audit);
    return this.#dispatch(passed, c.wave + 1, audit);
  }

  async #complete(c: CampaignRecord, audit: AuditEventInput[]): Promise<CampaignRecord> {
    const done: CampaignRecord = { ...c, state: 'completed', updatedAt: this.#o.clock.now() };
    const all = this.#o.store.listCampaignDevices(c.id);
    await this.#o.store.saveCampaign(done, [], [...audit, this.#audit(c, 'campaign.completed', 'gate', { succeeded: all.filter((d) => d.outcome === 'succeeded').length, failed: all.filter((d) => d.outcome === 'failed').length })], 'existing');
    this.#forget(c.id);
    this.#o.logger?.info({ campaign: c.id }, 'campaign completed');
    return done;
  }

  /**
   * Starts wave `index`: each of its devices gets a command id and its sending time, stored with the
   * campaign (one batch) before anything is published, so a restart sends the same commands again.
   * A device revoked since the campaign was planned is skipped.
   */
  async #dispatch(c: CampaignRecord, index: number, audit: AuditEventInput[]): Promise<CampaignRecord> {
    const store = this.#o.store;
    const now = this.#o.clock.now();
    const devices: CampaignDeviceRecord[] = [];
    for (const d of store.listCampaignDevices(c.id)) {
      if (d.wave !== index) continue;
      const record: DeviceRecord | undefined = store.getDevice(d.deviceId);
      if (!record || record.revokedAt !== undefined) devices.push({ ...d, outcome: 'skipped', code: record ? 'DEVICE_REVOKED' : 'DEVICE_NOT_FOUND', outcomeAt: now });
      else devices.push({ ...d, commandId: newCommandId(), sentAt: now });
    }
    const waves = c.waves.map((w) => (w.index === index ? { ...w, dispatchedAt: now } : w));
    const next: CampaignRecord = { ...c, state: 'running', wave: index, waves, updatedAt: now };
    const sent = devices.filter((d) => d.sentAt !== undefined);
    await store.saveCampaign(next, devices, [
      ...audit,
      this.#audit(c, 'campaign.wave-started', 'gate', { wave: index, devices: sent.length, skipped: devices.length - sent.length }),
      ...sent.map((d): AuditEventInput => ({ at: now, type: 'campaign.rotate-now', deviceId: d.deviceId, details: { campaign: c.id, wave: index, commandId: d.commandId! } })),
    ], 'existing');
    this.#o.logger?.info({ campaign: c.id, wave: index, devices: sent.length }, 'campaign wave started');
    await this.#sendUnsent(next);
    // A wave of only skipped devices is decided at once.
    return this.#advance(next);
  }

  /** Publishes the current wave's commands that have no outcome and were not published by this process. */
  async #sendUnsent(c: CampaignRecord): Promise<void> {
    const todo = this.#o.store.listCampaignDevices(c.id).filter((d) => d.wave === c.wave && d.sentAt !== undefined && d.outcome === undefined && !this.#published.has(key(c.id, d.deviceId)));
    const by = c.createdBy;
    await this.#each(todo, async (d) => {
      await publishDeviceCommand(this.#o, { deviceId: d.deviceId, command: 'rotate-now', commandId: d.commandId!, issuedAt: d.sentAt!, expiresAt: d.sentAt! + c.commandTtlSec * 1000, jitterSec: c.jitterSec, by });
      this.#published.add(key(c.id, d.deviceId));
    });
  }

  /** Runs `fn` over `items`, PUBLISH_CONCURRENCY at a time; failures are logged and left for the next tick. */
  async #each<T extends { deviceId: string }>(items: readonly T[], fn: (x: T) => Promise<void>): Promise<void> {
    let i = 0;
    let failed = 0;
    let firstCode: string | undefined;
    const worker = async () => {
      while (i < items.length) {
        const x = items[i++]!;
        try {
          await fn(x);
        } catch (e) {
          failed++;
          firstCode ??= isCodedError(e) ? e.code : 'UNKNOWN';
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(PUBLISH_CONCURRENCY, items.length) }, worker));
    if (failed) this.#o.logger?.warn({ failed, code: firstCode }, 'campaign commands not published; retried on the next tick');
  }

  /**
   * Withdraws the retained commands of aborted campaigns, unless the device got a newer command since
   * (an operator's, another campaign's: the audit log says), which an empty retained message would
   * erase. A failed publish stays for the next tick (for as long as this process runs).
   */
  async #retryWithdrawals(): Promise<void> {
    if (this.#withdrawals.size === 0) return;
    const todo: { k: string; campaignId: string; deviceId: string }[] = [];
    for (const [k, w] of this.#withdrawals) {
      const newer = (await this.#o.store.listAudit({ deviceId: w.deviceId })).some(
        (a) => a.at > w.sentAt && (a.type === 'operator.rotate-now' || a.type === 'operator.reattest' || (a.type === 'campaign.rotate-now' && a.details?.['campaign'] !== w.campaignId)),
      );
      if (newer) this.#withdrawals.delete(k);
      else todo.push({ k, campaignId: w.campaignId, deviceId: w.deviceId });
    }
    await this.#each(todo, async (w) => {
      await withdrawDeviceCommand(this.#o, w.deviceId);
      this.#withdrawals.delete(w.k);
    });
  }

  /** A finished campaign sends nothing more: its entries leave the published set. */
  #forget(campaignId: string): void {
    const prefix = key(campaignId, '');
    for (const k of this.#published) if (k.startsWith(prefix)) this.#published.delete(k);
  }

  #require(id: string, states: readonly CampaignRecord['state'][]): CampaignRecord {
    const c = this.#o.store.getCampaign(id);
    if (!c) throw new CampaignError('CAMPAIGN_NOT_FOUND', `no campaign ${id}`);
    if (!states.includes(c.state)) throw new CampaignError('CAMPAIGN_STATE', `campaign ${id} is ${c.state}; this needs ${states.join(' or ')}`);
    return c;
  }

  #audit(c: CampaignRecord, type: string, by: string, details: Record<string, string | number | boolean> = {}): AuditEventInput {
    return { at: this.#o.clock.now(), type, details: { campaign: c.id, kind: c.kind, by, ...details } };
  }

  #view(c: CampaignRecord): CampaignView {
    const devices = this.#o.store.listCampaignDevices(c.id);
    const codes: Record<string, number> = Object.create(null) as Record<string, number>;
    let succeeded = 0;
    let failed = 0;
    const waves = c.waves.map((w): CampaignWaveView => {
      const t = tallyWave(devices, w.index);
      succeeded += t.succeeded;
      failed += t.failed;
      for (const [k, n] of Object.entries(t.codes)) codes[k] = (codes[k] ?? 0) + n;
      return { ...w, ...t, pending: t.size - t.succeeded - t.failed - t.skipped };
    });
    const s = c.selector;
    return {
      campaignId: c.id,
      kind: c.kind,
      state: c.state,
      wave: c.wave,
      devices: devices.length,
      excluded: c.excluded,
      selector: { ...(s.owner === undefined ? {} : { owner: s.owner }), ...(s.model === undefined ? {} : { model: s.model }), ...(s.deviceIds ? { deviceIdCount: s.deviceIds.length } : {}), ...(s.samplePercent === undefined ? {} : { samplePercent: s.samplePercent }) },
      gates: c.gates,
      jitterSec: c.jitterSec,
      commandTtlSec: c.commandTtlSec,
      waves,
      succeeded,
      failed,
      failureCodes: codes,
      ...(c.paused ? { paused: c.paused } : {}),
      createdAt: c.createdAt,
      createdBy: c.createdBy,
      updatedAt: c.updatedAt,
    };
  }

  /** Campaign steps run one at a time (operator commands, device events, ticks). */
  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#chain.then(fn, fn);
    this.#chain = run.catch(() => undefined);
    return run;
  }
}

const key = (campaignId: string, deviceId: string) => `${campaignId}\0${deviceId}`;

function withoutOutcome(d: CampaignDeviceRecord): CampaignDeviceRecord {
  const { outcome: _o, code: _c, serial: _s, outcomeAt: _a, ...rest } = d;
  return rest;
}

/** Active campaigns (planned, running, paused) exist: used by metrics. */
export function isActiveCampaign(c: Pick<CampaignRecord, 'state'>): boolean {
  return ACTIVE_CAMPAIGN_STATES.has(c.state);
}
