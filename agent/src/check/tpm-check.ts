import { isCodedError } from '../../../common/coded-error.js';
import { NativeTpm } from '../../../native/lib/native-tpm.js';
import type { Tpm } from '../../../native/lib/tpm.js';
import { fail, ok, type CheckResult } from './check-result.js';

/**
 * The TPM answers: open the TCTI, read the capabilities (TPM2_GetCapability, nothing loaded, no TPM
 * state changed), close. Harmless next to a running agent: swtpm's TCTI connects per command, and a
 * kernel resource manager (/dev/tpmrm0) gives each context its own view.
 */
export async function checkTpm(tcti: string, o: { readonly timeoutMs: number; readonly open?: (tcti: string) => Promise<Tpm> }): Promise<CheckResult> {
  const open = o.open ?? ((t: string) => NativeTpm.open(t));
  let timer: NodeJS.Timeout | undefined;
  const work = (async () => {
    const tpm = await open(tcti);
    try {
      return await tpm.capabilities();
    } finally {
      await tpm.close().catch(() => undefined);
    }
  })();
  const timeout = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), o.timeoutMs);
  });
  try {
    const caps = await Promise.race([work, timeout]);
    if (caps === 'timeout') {
      work.catch(() => undefined);
      return fail('tpm', 'CHECK_TPM_TIMEOUT', `${tcti} did not answer within ${o.timeoutMs} ms`);
    }
    const spec = `${Math.floor(caps.specRevision / 100)}.${String(caps.specRevision % 100).padStart(2, '0')}`;
    return ok('tpm', `${tcti}: ${caps.manufacturer.trim() || 'unknown vendor'} firmware ${caps.firmwareVersion}, TPM 2.0 rev ${spec}`);
  } catch (e) {
    const code = isCodedError(e) ? e.code : undefined;
    if (code === 'TPM_UNREACHABLE') return fail('tpm', 'CHECK_TPM_UNREACHABLE', `${tcti}: ${(e as Error).message}`);
    return fail('tpm', 'CHECK_TPM_ERROR', `${tcti}: ${code ?? 'error'}: ${(e as Error).message}`);
  } finally {
    clearTimeout(timer);
  }
}
