import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Agent } from '../../agent/src/agent.js';
import { systemClock } from '../../common/clock.js';
import { toPem } from '../../common/der.js';
import { createCa } from '../../broker-bridge/src/ca/ca-setup.js';
import { CertificateIssuer } from '../../broker-bridge/src/ca/issuer.js';
import { deviceKey } from '../../broker-bridge/src/ca/test-util.js';
import { eventually, recordingLogger, startFleetFixture, type FleetFixture } from '../agent/fleet-fixture.js';
import { runProgram } from '../harness/cli.js';


/** `node dist/agent.mjs verify …`: exit code and output, never throws. */
const agentVerify = (args: string[]) => runProgram('agent', ['verify', ...args]);

/**
 * Devices cache the fleet's CRL (real swtpm, mosquitto, bridge, agents): every online agent holds the
 * CRL the bridge signs after a revocation; the revoked agent sees its own serial and parks in
 * `revoked` (and stays there across a restart, offline); the others verify peers offline with it,
 * in-process and with the `agent verify` CLI, while their agents run.
 */
describe('device-side revocation data (real agents and fleet)', () => {
  let fx: FleetFixture;
  const agents: Record<string, Agent> = {};
  const dirs: Record<string, string> = {};
  const devices: Record<string, Parameters<FleetFixture['agent']>[0]> = {};
  const certs: Record<string, string> = {};

  beforeAll(async () => {
    fx = await startFleetFixture();
    for (const id of ['crl-a', 'crl-b', 'crl-c']) {
      const d = await fx.device(id);
      dirs[id] = d.dataDir;
      devices[id] = d;
      agents[id] = fx.agent(d);
    }
    await Promise.all(Object.values(agents).map((a) => a.start()));
    for (const [id, a] of Object.entries(agents)) {
      const serial = a.status().certSerial!;
      certs[id] = fx.fleet.inventory.getCertificate(serial)!.pem;
      writeFileSync(join(fx.dir, `${id}.pem`), certs[id]!);
    }
  }, 120_000);
  afterAll(async () => {
    await fx?.stop();
  });

  it('every online agent holds the fleet CRL after connecting, and a peer verifies OK offline', async () => {
    const first = fx.fleet.revocation.current!.crlNumber.toString();
    for (const a of Object.values(agents)) {
      await eventually(() => a.status().crl?.crlNumber === first, 10_000, `${a.deviceId} holds CRL ${first}`);
      expect(a.status().crl?.freshness).toBe('fresh');
    }
    expect(agents['crl-b']!.verifyPeer(certs['crl-c']!)).toMatchObject({ valid: true, code: 'OK' });
    const cli = await agentVerify([join(fx.dir, 'crl-c.pem'), '--data', dirs['crl-b']!]);
    expect(cli.code, cli.err).toBe(0);
    expect(cli.out).toMatch(/^OK: /);
  });

  it('a signed trust bundle update (a second root) reaches every agent; peers under the new root then chain', async () => {
    for (const a of Object.values(agents)) await eventually(() => a.status().trustBundleVersion === 1, 10_000, `${a.deviceId} holds bundle v1`);
    const next = await createCa({
      outDir: join(fx.dir, 'next-ca'),
      clock: systemClock,
      trustDomain: 'test.fleet',
      root: { commonName: 'Next Root' },
      issuing: { commonName: 'Next Issuing' },
      backend: { kind: 'file', keyPath: join(fx.dir, 'next-issuing-key.pem') },
    });
    try {
      const issued = await new CertificateIssuer({ backend: next.backend, issuingCertificate: next.issuingCertificatePem, clock: systemClock, trustDomain: 'test.fleet' }).issue({
        deviceId: 'next-dev',
        publicKeySpki: deviceKey().spki,
        lifetimeSec: 3_600,
        backdateSec: 60,
        trustDomain: 'test.fleet',
      });
      const pem = toPem(issued.certificateDer, 'CERTIFICATE');
      const b = agents['crl-b']!;
      expect(b.verifyPeer(pem, [next.issuingCertificatePem]).code).toBe('CHAIN_UNTRUSTED');
      // Stage the new root: the bridge signs v2 (old + new root) under the current issuing CA.
      fx.fleet.trustBundle.push(next.rootCertificatePem);
      await fx.fleet.stopBridge();
      await fx.fleet.startBridge();
      for (const a of Object.values(agents)) await eventually(() => a.status().trustBundleVersion === 2, 10_000, `${a.deviceId} holds bundle v2`);
      // Chains now; no CRL from that issuer is cached, so the answer is CRL_MISSING, not CHAIN_UNTRUSTED.
      expect(b.verifyPeer(pem, [next.issuingCertificatePem]).code).toBe('CRL_MISSING');
      // The agents keep working on the next connection with the new bundle (the broker's root is in it).
      b.rotateNow();
      const before = b.status().rotations;
      await eventually(() => b.status().rotations === before + 1 && b.state === 'online', 20_000, 'crl-b rotated with bundle v2');
      certs['crl-b'] = fx.fleet.inventory.getCertificate(b.status().certSerial!)!.pem;
    } finally {
      await next.backend.close();
    }
  });

  it('revoking a device: every other agent holds the new CRL, the revoked one parks in revoked, offline verify says REVOKED', async () => {
    const a = agents['crl-a']!;
    const serialA = a.status().certSerial!;
    // onCrlChange (what the simulator measures propagation with) names each newer CRL once.
    const heard: string[] = [];
    const unlisten = agents['crl-b']!.onCrlChange((crlNumber) => heard.push(crlNumber));
    const r = await fx.fleet.revokeDevice('crl-a', 'keyCompromise');
    expect(r.serials).toEqual([serialA]);
    const n = r.crlNumber.toString();

    for (const id of ['crl-b', 'crl-c']) {
      await eventually(() => agents[id]!.status().crl?.crlNumber === n, 5_000, `${id} holds CRL ${n}`);
      if (id === 'crl-b') {
        expect(heard).toEqual([n]);
        unlisten();
      }
      // …and says so in its retained status, which the bridge ingests.
      await eventually(() => fx.fleet.inventory.getDevice(id)?.status?.crlNumber === n, 5_000, `${id} reports CRL ${n}`);
      expect(fx.fleet.inventory.getDevice(id)?.status?.trustBundleVersion).toBe(agents[id]!.status().trustBundleVersion);
    }
    // The CRL goes out before the broker strips the session, so the revoked agent hears it too.
    await eventually(() => a.state === 'revoked', 10_000, 'crl-a revoked');
    expect(a.status().error).toMatchObject({ code: 'AGENT_REVOKED', rejection: 'DEVICE_REVOKED' });
    await eventually(() => !a.status().online, 5_000, 'crl-a session closed');

    const verdict = agents['crl-b']!.verifyPeer(certs['crl-a']!);
    expect(verdict).toMatchObject({ valid: false, code: 'REVOKED' });
    expect(verdict.reason).toContain('keyCompromise');
    expect(agents['crl-b']!.verifyPeer(certs['crl-c']!).code).toBe('OK');

    // The CLI, while the agents run: from a peer's data directory, and the revoked device on itself.
    const peer = await agentVerify([join(fx.dir, 'crl-a.pem'), '--data', dirs['crl-c']!, '--json']);
    expect(peer.code).toBe(1);
    expect(JSON.parse(peer.out)).toMatchObject({ valid: false, code: 'REVOKED', crlNumber: n });
    const self = await agentVerify([join(fx.dir, 'crl-a.pem'), '--data', dirs['crl-a']!]);
    expect(self.code).toBe(1);
    expect(self.out).toMatch(/^REVOKED: serial [0-9a-f]+ is revoked \(keyCompromise\)/);
  });

  it('a revoked agent restarted offline stays revoked from its own cache: it never presents the certificate again', async () => {
    const old = agents['crl-a']!;
    await old.stop();
    await fx.fleet.stopBroker();
    try {
      const log = recordingLogger();
      const again = fx.agent(devices['crl-a']!, { logger: log });
      await expect(again.start()).rejects.toMatchObject({ code: 'AGENT_REVOKED' });
      expect(again.state).toBe('revoked');
      expect(again.status().tlsHandshakes).toBe(0);
      expect(log.lines.some((l) => l.msg === 'the fleet CRL lists our certificate; stopping its use')).toBe(true);
      await again.stop();
    } finally {
      await fx.fleet.startBroker();
    }
  });

  it('refuses bad input to the CLI with usage and coded errors', async () => {
    const usage = await agentVerify([]);
    expect(usage.code).toBe(2);
    expect(usage.err).toMatch(/usage: agent verify/);
    const missing = await agentVerify([join(fx.dir, 'nope.pem'), '--data', dirs['crl-b']!]);
    expect(missing.code).toBe(2);
    expect(missing.err).toMatch(/cannot read/);
    const noData = await agentVerify([join(fx.dir, 'crl-c.pem'), '--data', join(fx.dir, 'empty')]);
    expect(noData.code).toBe(3);
    expect(noData.err).toMatch(/AGENT_VERIFY_NO_SNAPSHOT/);
  });
});
