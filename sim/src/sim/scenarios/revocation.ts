import { readFileSync } from 'node:fs';
import { normalizeSerial, parseCrl } from '../../../../agent/src/crl-der.js';
import { pemBlocks } from '../../../../common/der.js';
import type { SimFleet } from '../sim-fleet.js';
import { countCodes, invariant, pick, type Scenario } from '../scenario.js';
import { bringOnline } from './common.js';

/**
 * The operator revokes k devices (a tenth of the fleet, at least one) over MQTT. Proves: each revoked
 * device's session is cut and its agent parks in `revoked` (the broker enforces the CRL and the ACL;
 * the agent sees its own serial in the CRL); every other device takes the new CRL and stays online.
 * Measures propagation: from the revoke command to each other device holding the new CRL.
 */
export const revocation: Scenario = {
  name: 'revocation',
  summary: 'revoke k devices; their sessions are cut, every other device caches the new CRL',
  measures: 'revoke sent → other device holds the new CRL',
  async run(sim, ctx) {
    const ids = await bringOnline(sim);
    const k = Math.max(1, Math.floor(ids.length / 10));
    const victims = pick(ids, k, ctx.random).sort();
    const others = ids.filter((id) => !victims.includes(id));
    const op = await sim.operator();
    let crlNumber = 0n;
    let sentAt = 0;
    try {
      sentAt = Date.now();
      for (const id of victims) {
        const r = await op.call('revoke', { deviceId: id, reason: 'keyCompromise' });
        crlNumber = BigInt(r.crlNumber);
      }
    } finally {
      await op.close();
    }
    ctx.log(`revoked ${victims.join(', ')}; CRL ${crlNumber}`);
    const inv = sim.fleet.inventory;
    const cut = (id: string) => sim.state(id) === 'revoked' && inv.getDevice(id)?.online !== true;
    const informed = (id: string) => sim.crlAt(id, crlNumber) !== undefined && sim.state(id) === 'online';
    await sim.until(() => victims.every(cut) && others.every(informed), 60_000 + ids.length * 100, 'revocation to reach every device').catch(() => undefined);
    const latenciesMs = others.flatMap((id) => {
      const at = sim.crlAt(id, crlNumber);
      return at === undefined ? [] : [Math.max(0, at - sentAt)];
    });
    return {
      succeeded: victims.filter(cut).length + others.filter(informed).length,
      failures: countCodes(sim.logs.filter((l) => l.code && !victims.includes(l.deviceId)).map((l) => l.code!)),
      lost: 0,
      latenciesMs,
      invariants: [
        invariant('revoked devices cut off', victims.filter((id) => !cut(id)).map((id) => `${id} is ${sim.state(id)}, online ${String(inv.getDevice(id)?.online)}`), `${victims.length} in state revoked, offline`),
        invariant('the broker refuses them', brokerRefusals(sim, victims), "the broker's CRL lists every certificate of theirs; its ACL denies them everything"),
        invariant('revoked in the inventory', victims.filter((id) => inv.getDevice(id)?.revokedAt === undefined || inv.listCertificates(id).some((c) => c.revokedAt === undefined)), 'device and every certificate revoked'),
        invariant('every other device holds the new CRL and stays online', others.filter((id) => !informed(id)).map((id) => `${id}: ${sim.state(id)}, CRL ${sim.devices.get(id)!.crls.at(-1)?.crlNumber ?? 'none'}`), `${others.length} devices on CRL ${crlNumber}`),
      ],
      figures: { revoked: victims.length, crlNumber: crlNumber.toString() },
    };
  },
};

/** What the broker enforces, read from its own files: the CRL mosquitto checks and the device ACL. */
function brokerRefusals(sim: SimFleet, victims: readonly string[]): string[] {
  const b = sim.fleet.broker;
  const crl = b.crlFile ? parseCrl(pemBlocks(readFileSync(b.crlFile, 'utf8'), 'X509 CRL')[0]!) : undefined;
  const listed = new Set(crl?.entries.map((e) => e.serial) ?? []);
  const acl = readFileSync(b.deviceAclFile, 'utf8');
  return victims.flatMap((id) => [
    ...sim.fleet.inventory.listCertificates(id).filter((c) => !listed.has(normalizeSerial(c.serial))).map((c) => `${id}: serial ${c.serial} not in the broker's CRL`),
    ...(acl.includes(`user ${id}\ntopic deny #\n`) ? [] : [`${id}: no deny entry in the broker's ACL`]),
  ]);
}
