import { createHash } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NativeTpm } from '../../../native/lib/native-tpm.js';
import type { TpmKey } from '../../../native/lib/tpm.js';
import { startTpm, stopAll, type TestTpm } from '../../../test/harness/index.js';
import { TPM_CC, TPM_RC, TpmProxy, type TpmProxyRule } from './tpm-proxy.js';

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
});
