import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { preferredEk } from '../../../native/lib/ek-order.js';
import { NativeTpm } from '../../../native/lib/native-tpm.js';
import type { TpmKey } from '../../../native/lib/tpm.js';
import { startTpm, stopAll, type TestTpm } from '../../../test/harness/index.js';
import { TPM_CC, TPM_RC, TpmProxy, type TpmProxyRule } from './tpm-proxy.js';

const run = promisify(execFile);

/**
 * The faulty-TPM proxy in front of a real swtpm, driven through the native addon (tpm2-tss ESAPI) as
 * the agent drives it. What a chip answers under load or self-test (RETRY, YIELDED, TESTING) is retried
 * by ESAPI itself, a bounded number of times; what must not be retried (LOCKOUT, FAILURE) is not.
 */
describe('faulty-TPM proxy (real swtpm, native addon)', () => {
  let sw: TestTpm;
  let proxy: TpmProxy;
  let tpm: NativeTpm;
  let key: TpmKey;
  const digest = createHash('sha256').update('proxy').digest();

  beforeAll(async () => {
    sw = await startTpm();
    proxy = await TpmProxy.start(sw.port);
    tpm = await NativeTpm.open(proxy.tcti);
    const srk = await tpm.ensureSrk();
    key = (await tpm.createIdentityKey(srk)).key;
  }, 60_000);
  afterEach(() => proxy.setRules([]));
  afterAll(async () => {
    await tpm?.close();
    await proxy?.stop();
    await sw?.stop();
    await stopAll();
  });

  const signs = () => proxy.stats().commands.get(TPM_CC.Sign) ?? 0;
  const signWith = async (rules: TpmProxyRule[]) => {
    proxy.setRules(rules);
    const before = { signs: signs(), injected: proxy.stats().injected };
    let error: (Error & { code?: string }) | undefined;
    try {
      await tpm.sign(key, digest);
    } catch (e) {
      error = e as Error & { code?: string };
    }
    return { error, submitted: signs() - before.signs, injected: proxy.stats().injected - before.injected };
  };

  it.each([
    ['RETRY', TPM_RC.RETRY],
    ['YIELDED', TPM_RC.YIELDED],
    ['TESTING', TPM_RC.TESTING],
  ])('a burst of %s is retried: the signature comes through', async (_name, rc) => {
    const r = await signWith([{ commandCode: TPM_CC.Sign, respond: { rc, times: 3 } }]);
    expect(r.error).toBeUndefined();
    expect(r.injected).toBe(3);
    expect(r.submitted).toBe(4);
  });

  it('a burst longer than ESAPI resubmits for (12 RETRY) comes through after the addon pauses and asks again', async () => {
    const t0 = performance.now();
    const r = await signWith([{ commandCode: TPM_CC.Sign, respond: { rc: TPM_RC.RETRY, times: 12 } }]);
    expect(r.error).toBeUndefined();
    expect(r.submitted).toBe(13);
    // Two rounds of ESAPI's 5 submissions failed, then the third got through: 25 + 50 ms of pauses.
    expect(performance.now() - t0).toBeGreaterThanOrEqual(70);
  });

  it('RETRY that never ends is retried a bounded number of times, then reported as TPM_RC_RETRY', async () => {
    const t0 = performance.now();
    const r = await signWith([{ commandCode: TPM_CC.Sign, respond: { rc: TPM_RC.RETRY } }]);
    const elapsed = performance.now() - t0;
    expect(r.error?.code).toBe('TPM_RC_RETRY');
    // ESAPI's 5 submissions, 6 times (the first try and 5 after pauses of 25..400 ms).
    expect(r.submitted).toBe(30);
    expect(elapsed).toBeGreaterThanOrEqual(770);
    expect(elapsed).toBeLessThan(10_000);
    // The context still works once the TPM does.
    expect((await signWith([])).error).toBeUndefined();
  });

  it.each([
    ['LOCKOUT', TPM_RC.LOCKOUT, 'TPM_RC_LOCKOUT'],
    ['FAILURE', TPM_RC.FAILURE, 'TPM_RC_FAILURE'],
  ])('%s is never retried: one submission, reported with its code', async (_name, rc, code) => {
    const r = await signWith([{ commandCode: TPM_CC.Sign, respond: { rc, times: 1 } }]);
    expect(r.error?.code).toBe(code);
    expect(r.submitted).toBe(1);
    expect((await signWith([])).error).toBeUndefined();
  });

  it('holds responses of one command code for its latency, leaves others alone', async () => {
    proxy.setRules([{ commandCode: TPM_CC.Sign, latencyMs: 300 }]);
    let t0 = performance.now();
    await tpm.sign(key, digest);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(290);
    t0 = performance.now();
    await tpm.capabilities();
    expect(performance.now() - t0).toBeLessThan(250);
  });

  it('refuses rules that make no sense', () => {
    expect(() => proxy.setRules([{ latencyMs: -1 }])).toThrow(expect.objectContaining({ code: 'TPM_PROXY_INVALID' }));
    expect(() => proxy.setRules([{ respond: { rc: 0 } }])).toThrow(expect.objectContaining({ code: 'TPM_PROXY_INVALID' }));
    expect(() => proxy.setRules([{ respond: { rc: TPM_RC.RETRY }, drop: {} }])).toThrow(expect.objectContaining({ code: 'TPM_PROXY_INVALID' }));
  });

  describe('NV fixtures: the EK certificate index as real chips report it, swtpm untouched', () => {
    const ECC_INDEX = 0x01c00016;
    const hexIndex = '0x01c00016';
    const scratch = () => mkdtempSync(join(tmpdir(), 'proxy-nv-'));
    /** tpm2_nvread (tpm2-tools, not our addon) of the index through `tcti`. */
    const nvread = async (tcti: string): Promise<Buffer> => {
      const dir = scratch();
      try {
        await run('tpm2_nvread', ['-T', tcti, hexIndex, '-C', 'o', '-o', join(dir, 'nv.bin')], { timeout: 20_000 });
        return readFileSync(join(dir, 'nv.bin'));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    };
    /** tpm2_nvreadpublic's size of the index through `tcti`. tpm2_nvread authorizes with an HMAC session, which a fixture cannot answer. */
    const nvSize = async (tcti: string): Promise<number> => {
      const { stdout } = await run('tpm2_nvreadpublic', ['-T', tcti, hexIndex], { timeout: 20_000 });
      return Number(/^\s*size: (\d+)$/m.exec(stdout)?.[1]);
    };
    /** A fresh context (EK indices are read once per context). */
    const ekThroughProxy = async () => {
      const t = await NativeTpm.open(proxy.tcti);
      try {
        const choice = await preferredEk(t).catch((e: unknown) => e);
        return { choice, ecc: await t.readEkCertificate('ecc').catch((e: unknown) => e) };
      } finally {
        await t.close();
      }
    };
    let der: Buffer;
    beforeAll(async () => {
      der = await nvread(sw.tcti);
    });
    afterEach(() => proxy.setNv(ECC_INDEX, undefined));

    it.each<[string, (d: Buffer) => Buffer]>([
      ['0xFF padding to 1,600 bytes (ST33HTPHF2EI2C)', (d) => Buffer.concat([d, Buffer.alloc(1600 - d.length, 0xff)])],
      ['the PC Client prefix 10 01 00 <len> (Intel)', (d) => Buffer.concat([Buffer.from([0x10, 0x01, 0x00, d.length >> 8, d.length & 0xff]), d])],
    ])('%s: tpm2_nvreadpublic sees the fixture, the addon reads the certificate alone', async (_name, make) => {
      const fixture = make(der);
      proxy.setNv(ECC_INDEX, fixture);
      expect(await nvSize(proxy.tcti)).toBe(fixture.length);
      // swtpm's NV is unchanged.
      expect(await nvSize(sw.tcti)).toBe(der.length);
      expect((await nvread(sw.tcti)).equals(der)).toBe(true);
      const ek = await ekThroughProxy();
      expect(ek.choice).toEqual({ kind: 'ecc', nvIndex: ECC_INDEX, template: 'H-3 ECC P-384' });
      expect((ek.ecc as Buffer).equals(der)).toBe(true);
    });

    it('a missing certificate: tpm2_nvreadpublic finds no index, the addon falls back to the RSA EK', async () => {
      proxy.setNv(ECC_INDEX, 'missing');
      await expect(run('tpm2_nvreadpublic', ['-T', proxy.tcti, hexIndex], { timeout: 20_000 })).rejects.toThrow();
      const ek = await ekThroughProxy();
      expect(ek.choice).toEqual({ kind: 'rsa', nvIndex: 0x01c00002, template: 'L-1 RSA-2048' });
      expect(ek.ecc).toBeNull();
    });

    it('a cut-off certificate is TPM_EK_NV_INVALID; a fixture that is not an NV index or is empty is refused', async () => {
      proxy.setNv(ECC_INDEX, der.subarray(0, 300));
      const ek = await ekThroughProxy();
      expect((ek.choice as { code?: string }).code).toBe('TPM_EK_NV_INVALID');
      expect((ek.ecc as Error).message).toMatch(/declares \d+ bytes but the index holds 300/);
      expect(() => proxy.setNv(0x81000001, der)).toThrow(expect.objectContaining({ code: 'TPM_PROXY_INVALID' }));
      expect(() => proxy.setNv(ECC_INDEX, Buffer.alloc(0))).toThrow(expect.objectContaining({ code: 'TPM_PROXY_INVALID' }));
    });
  });
});
