import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acceptTrustBundle } from '../../agent/src/trust-bundle.js';
import type { CaMaterial } from '../../broker-bridge/src/ca/ca-setup.js';
import { DEFAULT_AUDITOR, EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import { testFleetCa } from '../../broker-bridge/src/trust/test-util.js';
import { signTrustBundle } from '../../broker-bridge/src/trust/trust-bundle-signer.js';
import { systemClock } from '../../common/clock.js';

/**
 * Only the bridge may publish the trust bundle: the fleet's real broker (generated config and ACLs)
 * against the independent client `mosquitto_pub`, as a device, as an auditor and as an anonymous
 * client on the enrollment listener, each trying to replace the retained bundle with a forged one
 * (and to delete it). What counts is what an independent subscriber (`mosquitto_sub`) then receives:
 * still the bridge's signed bundle, which an agent accepts.
 */
interface Run {
  readonly code: number;
  readonly out: string;
}

function run(cmd: string, args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 15_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, out: stdout + stderr });
    });
  });
}

describe('trust bundle on the broker', () => {
  let dir: string;
  let fleet: EmbeddedFleet;
  let forger: CaMaterial;
  let forged: string;
  const files = (name: string) => ({ cert: join(dir, `${name}.pem`), key: join(dir, `${name}-key.pem`) });
  const topic = () => fleet.topics.fleet('trustBundle');

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'trust-bundle-broker-'));
    fleet = await EmbeddedFleet.start({ dir: join(dir, 'fleet'), clock: systemClock, trustDomain: 'test.fleet', ekTrust: { roots: [] } });
    writeFileSync(join(dir, 'root.pem'), fleet.ca.rootCertificatePem);
    for (const [name, cn] of [['device', 'gw-tb-1'], ['auditor', DEFAULT_AUDITOR]] as const) {
      const c = await fleet.clientCertificate(cn);
      writeFileSync(files(name).cert, c.certPem);
      writeFileSync(files(name).key, c.keyPem, { mode: 0o600 });
    }
    // Named exactly as the fleet's CAs (`test.fleet root`, `test.fleet issuing CA`).
    forger = await testFleetCa(join(dir, 'forger'), 'test.fleet', systemClock);
    // Well formed and far ahead in version: only its signature gives it away.
    forged = (
      await signTrustBundle({
        backend: forger.backend,
        signerChain: [forger.issuingCertificatePem],
        roots: [forger.rootCertificatePem],
        version: 1_000_000,
        issuedAt: Date.now(),
      })
    ).toString();
  });
  afterAll(async () => {
    await forger?.backend.close();
    await fleet?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const tls = (name: 'device' | 'auditor') => ['-p', String(fleet.broker.devicePort), '--cert', files(name).cert, '--key', files(name).key];
  const common = () => ['-h', '127.0.0.1', '--cafile', join(dir, 'root.pem')];
  const clientId = (who: string) => ['-i', `enr-${who}-${Math.random().toString(36).slice(2, 8)}`];

  /** The retained trust bundle as an independent subscriber (the auditor, read-only) receives it. */
  async function retained(): Promise<string> {
    const r = await run('mosquitto_sub', [...common(), ...tls('auditor'), ...clientId('reader'), '-t', topic(), '-C', '1', '-W', '5', '-V', 'mqttv5']);
    expect(r.code, r.out).toBe(0);
    return r.out.replace(/\n$/, '');
  }

  it('the bridge publishes a signed, versioned bundle that an agent holding the fleet root accepts', async () => {
    const payload = await retained();
    const v = acceptTrustBundle(Buffer.from(payload), { roots: fleet.trustBundle, version: undefined }, Date.now());
    expect(v).toMatchObject({ accepted: true, version: 1, roots: fleet.trustBundle });
    // And the forgery is what it is meant to be: refused for its signer alone.
    expect(acceptTrustBundle(Buffer.from(forged), { roots: fleet.trustBundle, version: 1 }, Date.now())).toMatchObject({
      accepted: false,
      code: 'TRUST_BUNDLE_SIGNER_UNTRUSTED',
    });
  });

  it('a device, an auditor and an anonymous enrollment client can neither replace nor delete it', async () => {
    const original = await retained();
    // Control: the same tool and credentials do publish retained where the ACL allows it.
    const own = fleet.topics.device('gw-tb-1', 'status');
    const control = await run('mosquitto_pub', [...common(), ...tls('device'), ...clientId('device'), '-t', own, '-r', '-q', '1', '-V', 'mqttv5', '-m', 'control']);
    expect(control).toEqual({ code: 0, out: '' });
    const seen = await run('mosquitto_sub', [...common(), ...tls('auditor'), ...clientId('reader'), '-t', own, '-C', '1', '-W', '5']);
    expect(seen.out).toBe('control\n');

    const intruders: Array<{ who: string; args: string[] }> = [
      { who: 'device', args: [...tls('device')] },
      { who: 'auditor', args: [...tls('auditor')] },
      { who: 'enrollment', args: ['-p', String(fleet.broker.enrollPort)] },
    ];
    for (const { who, args } of intruders) {
      for (const [version, payload] of [
        ['mqttv5', ['-m', forged]],
        ['mqttv311', ['-m', forged]],
        ['mqttv5', ['-n']], // an empty retained message would delete it
      ] as const) {
        const what = `${who} ${version} ${payload[0]}`;
        const r = await run('mosquitto_pub', [...common(), ...args, ...clientId(who), '-t', topic(), '-r', '-q', '1', '-V', version, ...payload]);
        // Connected and published (exit 0); mosquitto 2.0.11 answers MQTT 5 with PUBACK 0x87 (the tool
        // warns), and drops the MQTT 3.1.1 publish silently. What proves the refusal is the subscriber.
        expect(r.code, what).toBe(0);
        if (version === 'mqttv5') expect(r.out, what).toMatch(/Publish 1 failed: Not authorized/);
        expect(await retained(), what).toBe(original);
      }
    }

    // A bridge restart publishes the same message again: same version, same bytes.
    await fleet.stopBridge();
    await fleet.startBridge();
    expect(await retained()).toBe(original);
    expect(acceptTrustBundle(Buffer.from(original), { roots: fleet.trustBundle, version: 1 }, Date.now())).toMatchObject({ accepted: false, code: 'TRUST_BUNDLE_OLDER' });
  });

  it('under MQTT 5 the refusal is PUBACK reason 135 (0x87, not authorized) after a successful CONNACK', async () => {
    const r = await run('mosquitto_pub', [...common(), ...tls('device'), ...clientId('device'), '-t', topic(), '-r', '-q', '1', '-V', 'mqttv5', '-d', '-m', forged]);
    expect(r.out).toMatch(/received CONNACK \(0\)/);
    expect(r.out).toMatch(/received PUBACK \(Mid: 1, RC:135\)/);
  });
});
