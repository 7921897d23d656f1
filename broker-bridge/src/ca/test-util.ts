import { execFile } from 'node:child_process';
import { generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { encodeOid, seq, tlv, TAG } from '../../../common/der.js';

/** Test-only helpers shared by the CA tests. */

export interface OpensslResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export function openssl(args: string[]): Promise<OpensslResult> {
  return new Promise((resolve, reject) => {
    execFile('openssl', args, { maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err && typeof (err as { code?: unknown }).code !== 'number') return reject(err);
      resolve({ code: err ? Number((err as { code: number }).code) : 0, stdout, stderr });
    });
  });
}

/** `-attime` value for openssl (seconds since the epoch). */
export function attime(ms: number): string {
  return String(Math.floor(ms / 1000));
}

export function deviceKey(curve: 'prime256v1' | 'secp384r1' = 'prime256v1'): {
  privateKey: KeyObject;
  publicKey: KeyObject;
  spki: Buffer;
} {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: curve });
  return { privateKey, publicKey, spki: publicKey.export({ type: 'spki', format: 'der' }) };
}

/** A PKCS#10 CSR built by hand, so tests can also produce subtly broken ones. */
export function buildCsr(opts: {
  privateKey: KeyObject;
  spki: Buffer;
  commonNames?: string[];
  hash?: 'sha256' | 'sha384';
  tamper?: (cri: Buffer) => Buffer;
}): Buffer {
  const rdns = (opts.commonNames ?? []).map((cn) =>
    tlv(TAG.SET, seq(encodeOid('2.5.4.3'), tlv(TAG.UTF8_STRING, Buffer.from(cn, 'utf8')))),
  );
  const cri = seq(Buffer.from('020100', 'hex'), seq(...rdns), opts.spki, Buffer.from('a000', 'hex'));
  const hash = opts.hash ?? 'sha256';
  const signature = sign(hash, cri, opts.privateKey);
  const algOid = hash === 'sha256' ? '1.2.840.10045.4.3.2' : '1.2.840.10045.4.3.3';
  const signedCri = opts.tamper ? opts.tamper(cri) : cri;
  return seq(signedCri, seq(encodeOid(algOid)), tlv(TAG.BIT_STRING, Buffer.from([0]), signature));
}

export async function expectCode(p: Promise<unknown> | (() => unknown), code: string): Promise<void> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    const got = (e as { code?: unknown }).code;
    if (got !== code) throw new Error(`expected code ${code}, got ${String(got)}: ${(e as Error).message}`);
    return;
  }
  throw new Error(`expected code ${code}, but it succeeded`);
}
