import type { Tpm } from '../../native/lib/tpm.js';

/**
 * Counts the TPM signing operations the agent asks for (TPM2_Sign, TPM2_Certify, TPM2_Quote). A real
 * TPM needs ~200 ms per signature, so the protocol budgets at most 5 per enrollment or rotation; the
 * count makes that budget testable. Signatures inside TLS handshakes run in the addon's OpenSSL engine,
 * not through this interface, and are counted as handshakes by the agent.
 */
const SIGNING = new Set<PropertyKey>(['sign', 'certify', 'quote']);

export interface CountedTpm {
  readonly tpm: Tpm;
  /** Signing operations started through `tpm` so far (attempts: a failed one still cost TPM time). */
  signatures(): number;
}

export function countSignatures(inner: Tpm): CountedTpm {
  let count = 0;
  const tpm = new Proxy(inner, {
    get(target, prop) {
      const value: unknown = Reflect.get(target, prop, target);
      if (typeof value !== 'function') return value;
      const fn = value as (...args: unknown[]) => unknown;
      if (!SIGNING.has(prop)) return fn.bind(target);
      return (...args: unknown[]) => {
        count++;
        return fn.apply(target, args);
      };
    },
  });
  return { tpm, signatures: () => count };
}
