import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TPM_CC, TPM_RC } from '../../sim/src/sim/tpm-proxy.js';
import { TpmProxyProcess } from '../../sim/src/sim/tpm-proxy-process.js';
import { readEk } from '../../sim/src/sim/register-device.js';
import { eventually, startFleetFixture, type FleetFixture } from './fleet-fixture.js';

const run = promisify(execFile);

/**
 * The agent on a TPM that behaves like a chip (issue 13): busy answers, dictionary-attack lockout and
 * hardware latency, injected by the faulty-TPM proxy (sim/src/sim/tpm-proxy.ts) between the agent's
 * ESAPI and a real swtpm, with the real bridge and mosquitto. The proxy runs in its own process
 * (dist/tpm-proxy.mjs), as a chip is outside the agent: the agent's TLS signature blocks its event loop.
 */
describe('agent on a faulty TPM (proxy in front of swtpm, real bridge and mosquitto)', () => {
  let fx: FleetFixture;
  const proxies: TpmProxyProcess[] = [];
  beforeAll(async () => {
    fx = await startFleetFixture();
  });
  afterEach(async () => {
    await Promise.all(proxies.splice(0).map((p) => p.stop()));
  });
  afterAll(async () => {
    await fx?.stop();
  });

  /** A registered device whose agent reaches its TPM through a new proxy. */
  const deviceBehindProxy = async (id: string) => {
    const d = await fx.device(id);
    const proxy = await TpmProxyProcess.start(d.tpm.port);
    proxies.push(proxy);
    return { proxy, d: { ...d, bootstrap: { ...d.bootstrap, tcti: proxy.tcti } } };
  };

  it('enrolls through bursts of RETRY, YIELDED and TESTING on every command it uses', async () => {
    const { proxy, d } = await deviceBehindProxy('faulty-busy');
    const burst = (commandCode: number, rc: number) => ({ commandCode, respond: { rc, times: 3 } });
    await proxy.setRules([
      burst(TPM_CC.CreatePrimary, TPM_RC.TESTING),
      burst(TPM_CC.Create, TPM_RC.YIELDED),
      burst(TPM_CC.Load, TPM_RC.RETRY),
      burst(TPM_CC.ActivateCredential, TPM_RC.RETRY),
      burst(TPM_CC.Certify, TPM_RC.YIELDED),
      burst(TPM_CC.Sign, TPM_RC.RETRY),
      burst(TPM_CC.NV_Read, TPM_RC.TESTING),
    ]);
    const a = fx.agent(d);
    await a.start();
    expect(a.state).toBe('online');
    expect((await proxy.stats()).injected).toBe(21);
    expect(fx.fleet.inventory.getDevice(d.bootstrap.deviceId)?.certSerial).toBe(a.status().certSerial);
    await a.stop();
  }, 60_000);

  it('enrolls through a proxy whose EK certificate index reports a chip layout (ST33 padding to 1,600 bytes), swtpm untouched', async () => {
    const { proxy, d } = await deviceBehindProxy('faulty-nv-padded');
    const der = (await readEk(d.tpm.tcti)).ekCertificateDer;
    await proxy.setNv(0x01c00016, Buffer.concat([der, Buffer.alloc(1600 - der.length, 0xff)]));
    await proxy.setRules([{ commandCode: TPM_CC.NV_Read, respond: { rc: TPM_RC.RETRY, times: 2 } }]);
    // What the device's TPM now reports, seen with tpm2-tools; swtpm itself still holds the bare certificate.
    const size = async (tcti: string) => /^\s*size: (\d+)$/m.exec((await run('tpm2_nvreadpublic', ['-T', tcti, '0x01c00016'])).stdout)?.[1];
    expect(await size(proxy.tcti)).toBe('1600');
    expect(await size(d.tpm.tcti)).toBe(String(der.length));
    const a = fx.agent(d);
    await a.start();
    expect(a.state).toBe('online');
    expect(a.status().ek).toEqual({ kind: 'ecc', template: 'H-3 ECC P-384', nvIndex: '0x01c00016' });
    expect((await proxy.stats()).commands.get(TPM_CC.NV_Read)).toBeGreaterThanOrEqual(2);
    await a.stop();
  }, 60_000);

  it('enrolls and rotates with 300 ms per signature, certification and activation, within the protocol timeouts', async () => {
    const { proxy, d } = await deviceBehindProxy('faulty-slow');
    await proxy.setRules([TPM_CC.Sign, TPM_CC.Certify, TPM_CC.ActivateCredential].map((commandCode) => ({ commandCode, latencyMs: 300 })));
    const a = fx.agent(d);
    const t0 = Date.now();
    await a.start();
    // At least a CSR signature, the activation, the certification and the TLS handshake's signature.
    expect(Date.now() - t0).toBeGreaterThanOrEqual(4 * 300);
    const before = a.status().certSerial;
    a.rotateNow();
    await eventually(() => a.status().certSerial !== before && a.state === 'online', 30_000, 'rotated on the slow TPM');
    expect(a.status().rotations).toBe(1);
    await a.stop();
  }, 90_000);

  it('a TPM in lockout: the agent reports TPM_RC_LOCKOUT, keeps to its backoff instead of hammering, and enrolls once the lockout ends', async () => {
    const { proxy, d } = await deviceBehindProxy('faulty-lockout');
    await proxy.setRules([{ commandCode: TPM_CC.Sign, respond: { rc: TPM_RC.LOCKOUT } }]);
    const a = fx.agent(d);
    const started = a.start();
    await eventually(() => a.status().tpmError?.code === 'TPM_RC_LOCKOUT', 15_000, 'the lockout reported in the status');
    expect(a.state).not.toBe('online');
    // LOCKOUT is never retried by the addon: each Sign the TPM saw is one attempt of the agent's backoff.
    const signs0 = (await proxy.stats()).commands.get(TPM_CC.Sign) ?? 0;
    await new Promise((r) => setTimeout(r, 3_000));
    const signs = ((await proxy.stats()).commands.get(TPM_CC.Sign) ?? 0) - signs0;
    expect(signs).toBeLessThanOrEqual(8);
    // The owner clears the lockout (or its recovery time passes): the agent goes on by itself.
    await proxy.setRules([]);
    await started;
    expect(a.state).toBe('online');
    expect(a.status().tpmError).toBeUndefined();
    await a.stop();
  }, 60_000);
});
