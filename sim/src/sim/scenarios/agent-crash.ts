import type { AgentState } from '../../../../agent/src/agent.js';
import type { SimFleet } from '../sim-fleet.js';
import { invariant, type ScenarioContext, type Scenario } from '../scenario.js';
import { activeCertificates, enrollTimeoutMs, eventCount, settleOnline, sleep, tokensUsedOnce } from './common.js';
import { enrollOutcome } from './enroll-storm.js';
import { rotateAll } from './rotation-campaign.js';

/** Crashes while the fleet enrolls, and while it rotates. */
const ENROLL_CRASHES = 4;
const ROTATION_CRASHES = 3;
/** A crashed group stays powered off up to this long. */
const OFF_MS = 300;

/** States in which an agent is between two durable points of its lifecycle (not settled). */
const MID_STEP: ReadonlySet<AgentState> = new Set(['starting', 'enrolling', 'reattesting', 'connecting', 'rotating']);

/**
 * Agents die by SIGKILL at random lifecycle steps: a whole worker process (a group of devices losing
 * power together: no offline status, no TPM flush, no store close) is killed at a random moment while
 * the fleet enrolls (ENROLL_CRASHES times) and while an operator rotation wave runs (ROTATION_CRASHES
 * times); the coordinator starts a new worker and powers its devices on again. The seed decides
 * which worker and when: the moment a random number k of its devices (fewer than all) have finished
 * the step, so the others die somewhere inside it (or at once, when the group has finished already).
 * Proves: every device ends online with exactly one active certificate, the one its agent uses; each
 * token consumed once (a crash between issuance and storage does not burn the device); every device
 * rotated with a TPM-proven key; the inventory left consistent (no unconfirmed rotation certificate
 * still active); the `enrolled` and `rotated` events each in the inventory exactly once.
 */
export const agentCrash: Scenario = {
  name: 'agent-crash',
  summary: 'SIGKILL of agent processes mid-enrollment and mid-rotation; all end with one working identity',
  measures: 'first power-on → online (through the crashes)',
  async run(sim, ctx) {
    const ids = [...sim.devices.keys()];
    const crashes: Crash[] = [];
    sim.powerOn(ids);
    const poweredOn = new Map(ids.map((id) => [id, sim.devices.get(id)!.poweredOnAt!]));
    const online = (id: string) => sim.state(id) === 'online';
    for (let i = 0; i < ENROLL_CRASHES; i++) crashes.push(await crashRound(sim, ctx, 'enrollment', online));
    await settleOnline(sim, ids, enrollTimeoutMs(ids.length));
    const enrolled = enrollOutcome(sim, ids);
    const latenciesMs = ids.flatMap((id) => {
      const at = sim.reached(id, 'online');
      return at === undefined ? [] : [at - poweredOn.get(id)!];
    });

    const rotation = await rotateAll(sim, ids, ctx.log, async () => {
      const rotated = (id: string) => sim.state(id) === 'online' && rotatedOnce(sim, id);
      for (let i = 0; i < ROTATION_CRASHES; i++) crashes.push(await crashRound(sim, ctx, 'rotation', rotated));
    });

    const inv = sim.fleet.inventory;
    const once = async (id: string) => (await eventCount(sim, id, 'enrolled')) === 1 && (await eventCount(sim, id, 'rotated')) === 1;
    await sim.until(async () => (await Promise.all(ids.map(once))).every(Boolean), 30_000, 'every event delivered').catch(() => undefined);
    const statuses = await sim.statuses();
    const identity = ids.flatMap((id) => {
      const active = activeCertificates(sim, id);
      const uses = statuses.get(id)?.certSerial;
      return sim.state(id) === 'online' && active.length === 1 && active[0]!.serial === uses ? [] : [`${id} is ${sim.state(id)} using ${uses ?? 'nothing'}; active ${active.map((c) => c.serial).join(',') || 'none'}`];
    });
    const unconfirmed = ids.flatMap((id) =>
      inv.listCertificates(id).filter((c) => c.kind === 'rotate' && c.confirmedAt === undefined && c.supersededAt === undefined && c.revokedAt === undefined).map((c) => `${id}: rotation certificate ${c.serial} active, never confirmed`),
    );
    const events: string[] = [];
    for (const id of ids) if (!(await once(id))) events.push(`${id}: enrolled ${await eventCount(sim, id, 'enrolled')}×, rotated ${await eventCount(sim, id, 'rotated')}× (outbox pending ${statuses.get(id)?.outbox.pending})`);
    const hit = (phase: Crash['phase']) => crashes.filter((c) => c.phase === phase).flatMap((c) => c.states).filter((s) => MID_STEP.has(s)).length;
    const killedIn = crashes.flatMap((c) => c.states).reduce<Record<string, number>>((m, s) => ({ ...m, [s]: (m[s] ?? 0) + 1 }), {});
    return {
      succeeded: ids.length - identity.length,
      failures: { ...enrolled.failures, ...rotation.failures },
      lost: identity.length + events.length,
      latenciesMs,
      invariants: [
        invariant('every device online with one working identity', identity, `${ids.length - identity.length}/${ids.length} online, one active certificate each, the one the agent uses`),
        invariant('tokens used once', await tokensUsedOnce(sim, ids), 'one token.consumed and one enrollment certificate each'),
        invariant('inventory consistent', unconfirmed, 'no unconfirmed rotation certificate left active'),
        ...rotation.invariants.filter((i) => i.name !== 'no device lost service'),
        invariant('every event delivered once', events, "each device's enrolled and rotated events in the inventory exactly once"),
        invariant(
          'crashes landed mid-step',
          [...(hit('enrollment') ? [] : ['no enrollment crash killed an agent mid-step']), ...(hit('rotation') ? [] : ['no rotation crash killed an agent mid-step'])],
          `${hit('enrollment')} agents killed mid-step during enrollment, ${hit('rotation')} during rotation`,
        ),
      ],
      figures: { crashes: crashes.map((c) => `w${c.worker}@${c.phase}:${c.done}done`).join(' '), killedIn: Object.entries(killedIn).map(([s, n]) => `${s}×${n}`).join(' ') },
    };
  },
};

interface Crash {
  readonly phase: 'enrollment' | 'rotation';
  readonly worker: number;
  /** Devices of the group done with the step when it was killed (at least the k drawn). */
  readonly done: number;
  /** What each killed agent was doing. */
  readonly states: readonly AgentState[];
}

/**
 * One crash: a seeded worker (one with devices still inside the step, when there is one), killed as soon as all its agents run and a seeded number k (< its
 * group) of its devices are `done` with the step (checked on every state report), then powered off a seeded while, respawned
 * and its devices powered on again.
 */
async function crashRound(sim: SimFleet, ctx: ScenarioContext, phase: Crash['phase'], done: (id: string) => boolean): Promise<Crash> {
  // Among the workers with devices still inside the step (all, when none is): a crash there tests something.
  const all = Array.from({ length: sim.workerCount }, (_, w) => w);
  const busy = all.filter((w) => !sim.devicesOf(w).every(done));
  const pool = busy.length ? busy : all;
  const worker = pool[Math.floor(ctx.random() * pool.length)]!;
  const group = sim.devicesOf(worker);
  const k = Math.floor(ctx.random() * group.length);
  const offMs = Math.floor(ctx.random() * OFF_MS);
  // Every agent of the group running again (reported a state since its power-on), k of them done.
  const alive = (id: string) => !['stopped', undefined].includes(sim.state(id));
  await sim.until(() => group.every(alive) && group.filter(done).length >= k, 30_000, `${k} devices of worker ${worker} through ${phase}`).catch(() => undefined);
  const states = group.map((id) => sim.state(id) ?? 'stopped');
  const finished = group.filter(done).length;
  await sim.crashWorker(worker);
  ctx.log(`killed worker ${worker} (${phase}, ${finished}/${group.length} done): ${states.filter((s) => MID_STEP.has(s)).length} agents mid-step`);
  await sleep(offMs);
  await sim.respawnWorker(worker);
  sim.powerOn(group);
  return { phase, worker, done: finished, states };
}

/** The device is on a rotation certificate (this scenario rotates once). */
function rotatedOnce(sim: SimFleet, id: string): boolean {
  const active = activeCertificates(sim, id);
  return active.length === 1 && active[0]!.kind === 'rotate';
}
