import type { Agent } from '../../agent/src/agent.js';
import type { EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import type { Clock } from '../../common/clock.js';
import { CodedError } from '../../common/coded-error.js';
import type { OperatorClient } from '../../operator/src/client.js';

/**
 * The lifecycle steps the demo shows, each against the running fleet and agents, each returning what
 * it measured for the summary. A step waits for what it shows to be true of the real components (agent
 * state and status, the fleet's inventory) and fails with DEMO_STEP_TIMEOUT, naming what it waited
 * for, when that does not happen in time; the demo's signal (Ctrl-C) ends any wait with
 * DEMO_INTERRUPTED.
 */
export type DemoStepCode = 'DEMO_STEP_TIMEOUT' | 'DEMO_INTERRUPTED';

export class DemoStepError extends CodedError<DemoStepCode> {}

export interface StepContext {
  readonly fleet: EmbeddedFleet;
  readonly agents: readonly Agent[];
  readonly clock: Clock;
  readonly signal: AbortSignal;
  /** One line of narration (above the live table). */
  readonly say: (line: string) => void;
  /** Longest wait for one condition. Default 30 s. */
  readonly timeoutMs?: number;
}

/** Polls `check` (the conditions live in real processes) and resolves with the milliseconds it took. */
export async function until(ctx: Pick<StepContext, 'clock' | 'signal' | 'timeoutMs'>, what: string, check: () => boolean): Promise<number> {
  const start = ctx.clock.now();
  const timeoutMs = ctx.timeoutMs ?? 30_000;
  while (!check()) {
    if (ctx.signal.aborted) throw new DemoStepError('DEMO_INTERRUPTED', `interrupted while waiting until ${what}`);
    if (ctx.clock.now() - start > timeoutMs) throw new DemoStepError('DEMO_STEP_TIMEOUT', `not within ${timeoutMs / 1000} s: ${what}`);
    await pause(20, ctx.signal);
  }
  return ctx.clock.now() - start;
}

/** Waits `ms` of real time (the demo lets a state be seen); ends early when the demo is interrupted. */
export function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

export interface EnrollmentOutcome {
  readonly enrolled: number;
  readonly ms: number;
  readonly firstMs: number;
}

/** Starts every agent: each enrolls with its one-time token, then goes online over mutual TLS. */
export async function enrollment(ctx: StepContext): Promise<EnrollmentOutcome> {
  const t0 = ctx.clock.now();
  const times = await Promise.all(ctx.agents.map((a) => a.start().then(() => ctx.clock.now() - t0)));
  const enrolled = ctx.agents.filter((a) => a.status().enrollment !== undefined && a.state === 'online').length;
  const used = ctx.fleet.inventory.listDevices().filter((d) => d.enrolledAt !== undefined).length;
  ctx.say(`enrolled ${enrolled}/${ctx.agents.length} devices in ${Math.max(...times)} ms (first online after ${Math.min(...times)} ms); ${used} one-time tokens consumed`);
  return { enrolled, ms: Math.max(...times), firstMs: Math.min(...times) };
}

export interface RotationOutcome {
  readonly rotated: number;
  readonly ms: number;
  readonly retired: number;
}

/**
 * The operator's `rotate-now` for every device, through the bridge: a retained device command each
 * agent runs once (new key in its TPM, certified by its AK, new certificate, reconnect, confirm).
 */
export async function rotation(ctx: StepContext, operator: OperatorClient): Promise<RotationOutcome> {
  const before = new Map(ctx.agents.map((a) => [a.deviceId, { serial: a.status().certSerial, rotations: a.status().rotations }]));
  const t0 = ctx.clock.now();
  for (const a of ctx.agents) await operator.call('rotate-now', { deviceId: a.deviceId });
  ctx.say(`operator ops: rotate-now accepted by the bridge for ${ctx.agents.length} devices in ${ctx.clock.now() - t0} ms`);
  const rotated = (a: Agent) => {
    const s = a.status();
    const b = before.get(a.deviceId)!;
    return s.rotations > b.rotations && s.certSerial !== b.serial && a.state === 'online';
  };
  await until(ctx, 'every device rotated and is online with its new certificate', () => ctx.agents.every(rotated));
  const ms = ctx.clock.now() - t0;
  // The bridge retires the old certificate once the device confirmed it works with the new one.
  const retiredOf = () => [...before.values()].filter((b) => b.serial !== undefined && ctx.fleet.inventory.getCertificate(b.serial)?.supersededAt !== undefined).length;
  await until(ctx, 'the bridge retired every old certificate', () => retiredOf() === ctx.agents.length);
  const sigs = [...new Set(ctx.agents.map((a) => a.status().lastRotationSignatures ?? 0))].join('/');
  ctx.say(`rotated ${ctx.agents.length}/${ctx.agents.length} devices in ${ms} ms: new keys in their TPMs (${sigs} TPM signatures each), ${retiredOf()} old certificates retired`);
  return { rotated: ctx.agents.filter(rotated).length, ms, retired: retiredOf() };
}

export interface RevocationOutcome {
  readonly deviceId: string;
  readonly crlBefore: string;
  readonly crlAfter: string;
  readonly enforced: boolean;
  /** `fleet.revokeDevice` returned: inventory, new CRL signed, broker files + SIGHUP, CRL published. */
  readonly revokeMs: number;
  /** From the revoke until the revoked device's agent parked in `revoked`. */
  readonly cutOffMs: number;
  readonly others: number;
  /** From the revoke until every other agent held the new CRL. */
  readonly othersHoldMs: number;
  /** From the revoke until the fleet's inventory had every other device's status saying it holds the new CRL. */
  readonly othersReportedMs: number;
}

/** Revokes `victim`: its agent ends in `revoked`; the others cache the new CRL and report its number. */
export async function revocation(ctx: StepContext, victim: Agent): Promise<RevocationOutcome> {
  const others = ctx.agents.filter((a) => a !== victim);
  const crlBefore = victim.status().crl?.crlNumber ?? '-';
  const t0 = ctx.clock.now();
  const r = await ctx.fleet.revokeDevice(victim.deviceId, 'keyCompromise');
  const revokeMs = ctx.clock.now() - t0;
  const crlAfter = r.crlNumber.toString();
  ctx.say(
    `fleet: ${victim.deviceId} revoked (keyCompromise) in ${revokeMs} ms: ${r.serials.length} certificates on CRL #${crlAfter}; ` +
      `${r.enforced ? 'broker reloaded its CRL and ACLs (SIGHUP): the session is stripped, reconnects refused' : 'broker NOT updated'}`,
  );
  // Timed from the revoke: the CRL goes out before revokeDevice returns, so devices may know first.
  await until(ctx, `${victim.deviceId}'s agent is revoked`, () => victim.state === 'revoked');
  const cutOffMs = ctx.clock.now() - t0;
  await until(ctx, `every other agent holds CRL #${crlAfter}`, () => others.every((a) => a.status().crl?.crlNumber === crlAfter));
  const othersHoldMs = ctx.clock.now() - t0;
  await until(ctx, `the fleet's inventory shows every other device reporting CRL #${crlAfter}`, () =>
    others.every((a) => ctx.fleet.inventory.getDevice(a.deviceId)?.status?.crlNumber === crlAfter),
  );
  const othersReportedMs = ctx.clock.now() - t0;
  ctx.say(`${victim.deviceId} cut off: its agent is revoked ${cutOffMs} ms after the revoke (it saw its own serial on the CRL)`);
  ctx.say(`the others learned it: ${others.length}/${others.length} hold CRL #${crlAfter} (was #${crlBefore}) ${othersHoldMs} ms after the revoke; their retained status says so after ${othersReportedMs} ms`);
  return { deviceId: victim.deviceId, crlBefore, crlAfter, enforced: r.enforced, revokeMs, cutOffMs, others: others.length, othersHoldMs, othersReportedMs };
}

export interface OutageOutcome {
  readonly agents: number;
  /** From the kill until every agent noticed (state connecting). */
  readonly detectMs: number;
  readonly downMs: number;
  /** From the broker's restart until every agent was online again. */
  readonly recoverMs: number;
  /** From the broker's restart until the bridge had heard from every agent again. */
  readonly fleetHeardMs: number;
}

/** How long the broker stays down: long enough to see, short enough for a demo. */
export const OUTAGE_MS = 1500;

/** SIGKILLs mosquitto, keeps it down, starts it again: the agents reconnect by themselves. */
export async function brokerOutage(ctx: StepContext, agents: readonly Agent[]): Promise<OutageOutcome> {
  const t0 = ctx.clock.now();
  await ctx.fleet.killBroker();
  ctx.say(`mosquitto killed (SIGKILL); it stays down for ${OUTAGE_MS / 1000} s`);
  await until(ctx, 'every agent noticed the broker is gone', () => agents.every((a) => a.state === 'connecting'));
  const detectMs = ctx.clock.now() - t0;
  await pause(Math.max(0, OUTAGE_MS - (ctx.clock.now() - t0)), ctx.signal);
  await ctx.fleet.startBroker();
  const t1 = ctx.clock.now();
  const downMs = t1 - t0;
  ctx.say(`mosquitto started again on the same ports after ${downMs} ms; nobody tells the agents`);
  await until(ctx, 'every agent is online again', () => agents.every((a) => a.state === 'online' && a.status().online));
  const recoverMs = ctx.clock.now() - t1;
  await until(ctx, 'the bridge heard from every agent again', () => agents.every((a) => (ctx.fleet.inventory.getDevice(a.deviceId)?.lastSeenAt ?? 0) >= t1));
  const fleetHeardMs = ctx.clock.now() - t1;
  ctx.say(`${agents.length}/${agents.length} agents back online by themselves ${recoverMs} ms after the restart; the bridge heard from all of them after ${fleetHeardMs} ms`);
  return { agents: agents.length, detectMs, downMs, recoverMs, fleetHeardMs };
}
