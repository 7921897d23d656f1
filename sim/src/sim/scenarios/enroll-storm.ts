import type { SimFleet } from '../sim-fleet.js';
import { countCodes, invariant, type Scenario } from '../scenario.js';
import { activeCertificates, enrollTimeoutMs, settleOnline } from './common.js';

/**
 * Every device powers on at once and enrolls with its one-time token (TPM attestation, credential
 * activation, TPM2_Certify) and goes online over mTLS. Proves: all enroll, each token is used once
 * (one enrollment certificate per device, the token consumed), and refusals under load (rate limits)
 * are retried with backoff until they succeed.
 */
export const enrollStorm: Scenario = {
  name: 'enroll-storm',
  summary: 'all devices power on at once; all enroll, tokens used once, backoff holds',
  measures: 'power-on → online',
  async run(sim) {
    const ids = [...sim.devices.keys()];
    sim.powerOn(ids);
    await settleOnline(sim, ids, enrollTimeoutMs(ids.length));
    return enrollOutcome(sim, ids);
  },
};

/** Latency, success and the one-token-one-certificate invariants of an enrollment wave. */
export function enrollOutcome(sim: SimFleet, ids: readonly string[]) {
  const online = ids.filter((id) => sim.state(id) === 'online');
  const latenciesMs = online.map((id) => sim.reached(id, 'online')! - sim.devices.get(id)!.poweredOnAt!);
  const inv = sim.fleet.inventory;
  const notOnce = ids.filter((id) => inv.listCertificates(id).filter((c) => (c.kind ?? 'enroll') === 'enroll').length !== 1).map((id) => `${id}: ${inv.listCertificates(id).length} enrollment certificates`);
  const notEnrolled = ids.filter((id) => inv.getDevice(id)?.enrolledAt === undefined).map((id) => `${id} not enrolled`);
  const identities = ids.filter((id) => activeCertificates(sim, id).length !== 1).map((id) => `${id}: ${activeCertificates(sim, id).length} active certificates`);
  return {
    succeeded: online.length,
    failures: countCodes(sim.logs.filter((l) => l.code && ids.includes(l.deviceId)).map((l) => l.code!)),
    lost: notEnrolled.length + identities.length,
    latenciesMs,
    invariants: [
      invariant('every device online', ids.filter((id) => sim.state(id) !== 'online').map((id) => `${id} is ${sim.state(id)}`), `${online.length}/${ids.length} online`),
      invariant('every device enrolled, once', [...notEnrolled, ...notOnce], 'one enrollment certificate each, token consumed'),
      invariant('one active identity per device', identities, 'exactly one active certificate each'),
    ],
  };
}
