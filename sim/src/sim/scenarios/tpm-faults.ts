import { TPM_CC, TPM_RC, type TpmProxyRule } from '../tpm-proxy.js';
import { countCodes, invariant, type Scenario, type ScenarioContext } from '../scenario.js';
import { activeCertificates, enrollTimeoutMs, settleOnline, sleep, tokensUsedOnce } from './common.js';
import { enrollOutcome } from './enroll-storm.js';
import { rotateAll } from './rotation-campaign.js';

/** How long the locked-out devices stay locked out (the chip's recovery time, or until the owner clears it). */
const LOCKOUT_MS = 3_000;
/** Signatures a locked-out agent may ask for while locked out (LOCKOUT_MS after its first): its backoff's pace, not a hammering loop. */
const MAX_SIGNS_IN_LOCKOUT = 15;
/** Each busy answer comes this many times in a row (ESAPI resubmits 5 times, the addon pauses and asks again). */
const BURST = 3;

/** Busy answers (RETRY, YIELDED, TESTING) on every command a device uses to enroll and rotate. */
function busyRules(random: () => number): TpmProxyRule[] {
  const codes = [TPM_RC.RETRY, TPM_RC.YIELDED, TPM_RC.TESTING];
  return [TPM_CC.NV_Read, TPM_CC.CreatePrimary, TPM_CC.Create, TPM_CC.Load, TPM_CC.ActivateCredential, TPM_CC.Certify, TPM_CC.Sign].map((commandCode) => ({
    commandCode,
    respond: { rc: codes[Math.floor(random() * codes.length)]!, times: BURST },
  }));
}

/**
 * TPMs behaving as chips do, through the faulty-TPM proxy in front of each device's swtpm (issue 13): a
 * third of the devices (seeded) answer busy (RETRY/YIELDED/TESTING) in bursts on every command they use,
 * a quarter are in dictionary-attack lockout (LOCKOUT on every signature) for LOCKOUT_MS, the rest are
 * well. Then an operator rotation wave with the busy devices busy again. Proves: every device ends
 * online with one identity and rotated with a TPM-proven key; busy answers are absorbed (the faults were
 * really injected); a locked-out device says TPM_RC_LOCKOUT and keeps to its backoff (at most
 * MAX_SIGNS_IN_LOCKOUT signatures asked during the lockout), and enrolls by itself once it ends; each
 * token used once.
 */
export const tpmFaults: Scenario = {
  name: 'tpm-faults',
  summary: 'busy TPMs (RETRY/YIELDED/TESTING bursts) and TPMs in lockout while enrolling and rotating; all end online, no hammering',
  measures: 'first power-on → online (through the faults)',
  tpmProxy: true,
  async run(sim, ctx) {
    const ids = [...sim.devices.keys()];
    const { busy, locked } = assign(ids, ctx);
    for (const id of busy) sim.setTpmFaults(id, busyRules(ctx.random));
    for (const id of locked) sim.setTpmFaults(id, [{ commandCode: TPM_CC.Sign, respond: { rc: TPM_RC.LOCKOUT } }]);
    ctx.log(`${busy.length} busy TPMs, ${locked.length} in lockout for ${LOCKOUT_MS} ms, ${ids.length - busy.length - locked.length} well`);

    const signs = (id: string) => sim.tpmStats(id).commands.get(TPM_CC.Sign) ?? 0;
    const poweredOn = Date.now();
    sim.powerOn(ids);
    // The lockout lasts LOCKOUT_MS from each locked device's first refused signature (a loaded
    // machine may take a while to get there).
    await sim.until(() => locked.every((id) => signs(id) >= 1), enrollTimeoutMs(ids.length), 'every locked-out device asked for a signature').catch(() => undefined);
    await sleep(LOCKOUT_MS);
    const signsInLockout = new Map(locked.map((id) => [id, signs(id)]));
    for (const id of locked) sim.setTpmFaults(id, []); // the recovery time passed
    await settleOnline(sim, ids, enrollTimeoutMs(ids.length));
    const enrolled = enrollOutcome(sim, ids);
    const latenciesMs = ids.flatMap((id) => {
      const at = sim.reached(id, 'online');
      return at === undefined ? [] : [at - poweredOn];
    });
    const injectedAtEnrollment = new Map(busy.map((id) => [id, sim.tpmStats(id).injected]));

    // Busy again while rotating.
    for (const id of busy) sim.setTpmFaults(id, busyRules(ctx.random));
    const rotation = await rotateAll(sim, ids, ctx.log);

    const statuses = await sim.statuses();
    const identity = ids.flatMap((id) => {
      const active = activeCertificates(sim, id);
      const uses = statuses.get(id)?.certSerial;
      return sim.state(id) === 'online' && active.length === 1 && active[0]!.serial === uses ? [] : [`${id} is ${sim.state(id)} using ${uses ?? 'nothing'}`];
    });
    const notInjected = busy.flatMap((id) => {
      const atEnroll = injectedAtEnrollment.get(id) ?? 0;
      const total = sim.tpmStats(id).injected;
      return atEnroll > 0 && total > atEnroll ? [] : [`${id}: ${atEnroll} busy answers while enrolling, ${total - atEnroll} while rotating`];
    });
    const lockoutReported = new Set(sim.logs.filter((l) => l.code === 'TPM_RC_LOCKOUT').map((l) => l.deviceId));
    const lockout = locked.flatMap((id) => {
      const n = signsInLockout.get(id) ?? 0;
      if (!lockoutReported.has(id)) return [`${id} never reported TPM_RC_LOCKOUT`];
      return n >= 1 && n <= MAX_SIGNS_IN_LOCKOUT ? [] : [`${id} asked for ${n} signatures during the lockout`];
    });
    const worst = Math.max(0, ...locked.map((id) => signsInLockout.get(id) ?? 0));
    for (const id of ids) sim.setTpmFaults(id, []);
    return {
      succeeded: ids.length - identity.length,
      failures: { ...enrolled.failures, ...rotation.failures, ...countCodes(sim.logs.filter((l) => l.code === 'TPM_RC_LOCKOUT' && l.level === 'error').map(() => 'TPM_RC_LOCKOUT')) },
      lost: identity.length,
      latenciesMs,
      invariants: [
        invariant('every device online with one working identity', identity, `${ids.length - identity.length}/${ids.length} online, one active certificate each, the one the agent uses`),
        invariant('busy answers absorbed', notInjected, `${busy.length} busy TPMs answered busy while enrolling and rotating, all came through`),
        invariant('lockout reported, no hammering', lockout, `${locked.length} locked-out TPMs: TPM_RC_LOCKOUT reported, at most ${worst} signatures asked in ${LOCKOUT_MS} ms (limit ${MAX_SIGNS_IN_LOCKOUT})`),
        invariant('tokens used once', await tokensUsedOnce(sim, ids), 'one token.consumed and one enrollment certificate each'),
        ...rotation.invariants,
      ],
      figures: { busy: busy.length, 'locked out': locked.length, 'max signs in lockout': worst },
    };
  },
};

/** Seeded: about a third busy, a quarter locked out (at least one of each when there are 3+ devices). */
function assign(ids: readonly string[], ctx: ScenarioContext): { busy: string[]; locked: string[] } {
  const shuffled = [...ids];
  for (let i = shuffled.length - 1; i > 0; i--) {
    const j = Math.floor(ctx.random() * (i + 1));
    [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
  }
  const nBusy = ids.length >= 3 ? Math.max(1, Math.round(ids.length / 3)) : Math.min(1, ids.length);
  const nLocked = ids.length >= 3 ? Math.max(1, Math.round(ids.length / 4)) : ids.length - nBusy;
  return { busy: shuffled.slice(0, nBusy), locked: shuffled.slice(nBusy, nBusy + nLocked) };
}

