import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadBootstrap } from '../../agent/src/config.js';
import { DEFAULT_OPERATOR } from '../../broker-bridge/src/embedded-fleet.js';
import type { Transport } from '../../common/transport/transport.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import { startFleetFixture, type FleetFixture } from '../agent/fleet-fixture.js';
import { connectEnrollment, enrollBody, enrollPayload, exchange, newRequestId, prepareDevice } from '../enrollment/scripted-device.js';
import { runProgram, type CliResult } from '../harness/cli.js';

/**
 * `operator token-reissue --bootstrap-out` through the shipped bundle: a device registered on the
 * factory line (its own swtpm) whose token is re-issued over MQTT. The station's token is refused from
 * then on (TOKEN_UNKNOWN, a real enrollment attempt with the TPM's EK), and the agent enrolls from the
 * bootstrap file the operator CLI wrote.
 */
describe('operator token-reissue, then enrollment (real TPM, broker, bridge, agent)', () => {
  let fx: FleetFixture;
  let flags: string[];
  const op = (args: string[]): Promise<CliResult> => runProgram('operator', [...args, ...flags]);

  beforeAll(async () => {
    fx = await startFleetFixture({
    });
    const c = await fx.fleet.clientCertificate(DEFAULT_OPERATOR);
    writeFileSync(join(fx.dir, 'op.pem'), c.certPem);
    writeFileSync(join(fx.dir, 'op-key.pem'), c.keyPem, { mode: 0o600 });
    writeFileSync(join(fx.dir, 'root.pem'), fx.fleet.ca.rootCertificatePem);
    flags = ['--broker', fx.fleet.broker.deviceUrl, '--cert', join(fx.dir, 'op.pem'), '--key', join(fx.dir, 'op-key.pem'), '--ca', join(fx.dir, 'root.pem')];
  });
  afterAll(async () => {
    await fx?.stop();
  });

  it('writes a bootstrap file with a fresh token; the old token is refused and the agent enrolls with the new one', async () => {
    const d = await fx.device('tpm-1');
    const out = join(fx.dir, 'tpm-1.bootstrap.json');
    const r = await op(['token-reissue', 'tpm-1', '--ttl', '2h', '--bootstrap-out', out, '--enroll-url', fx.fleet.broker.enrollUrl, '--tcti', d.tpm.tcti, '--json']);
    expect(r.code, r.err).toBe(0);
    const printed = JSON.parse(r.out) as { deviceId: string; bootstrapFile: string; tokenExpiresAt: number };
    expect(printed).toMatchObject({ deviceId: 'tpm-1', bootstrapFile: out });
    expect(r.out).not.toMatch(/"token"/); // the token went into the file only
    expect(statSync(out).mode & 0o777).toBe(0o600);
    const bootstrap = loadBootstrap(out);
    expect(bootstrap).toMatchObject({ deviceId: 'tpm-1', tcti: d.tpm.tcti, enrollUrl: fx.fleet.broker.enrollUrl, deviceUrl: fx.fleet.broker.deviceUrl, tokenExpiresAt: printed.tokenExpiresAt });
    expect(bootstrap.token).not.toBe(d.bootstrap.token);
    expect(bootstrap.trustBundle).toEqual([readFileSync(join(fx.dir, 'root.pem'), 'utf8').trim() + '\n']);

    // The station's token, presented with the device's real EK: refused, the fleet no longer knows it.
    const tpm = await NativeTpm.open(d.tpm.tcti);
    let t: Transport | undefined;
    try {
      const m = await prepareDevice(tpm, 'tpm-1');
      try {
        t = await connectEnrollment(fx.fleet.broker.enrollUrl, fx.fleet.trustBundle[0]!, 'tpm-1');
        const requestId = newRequestId();
        const answer = await exchange(t, fx.fleet.topics, 'tpm-1', 'enroll', enrollPayload(requestId, enrollBody(m, d.bootstrap.token)), requestId);
        expect(answer.kind === 'rejected' ? answer.msg.error.code : answer.kind).toBe('TOKEN_UNKNOWN');
      } finally {
        for (const k of [m.ak, m.key, m.ek]) await tpm.flush(k);
      }
    } finally {
      await t?.close();
      await tpm.close();
    }

    // The agent, from the file the operator CLI wrote, enrolls.
    const a = fx.agent({ bootstrap, dataDir: d.dataDir });
    await a.start();
    expect(a.state).toBe('online');
    expect(fx.fleet.inventory.getDevice('tpm-1')?.enrolledAt).toBeDefined();
    const again = await op(['token-reissue', 'tpm-1']);
    expect(again.code).toBe(2);
    expect(again.err).toMatch(/^operator: DEVICE_ALREADY_ENROLLED: /);
  });
});
