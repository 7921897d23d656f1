import { execFile } from 'node:child_process';
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readCertificateFields, type CertificateFields } from './certificate-fields.js';
import { CertificateSignatureError, certificateSignatureValid } from './certificate-signature.js';

/**
 * certificateSignatureValid on certificates OpenSSL made (an encoder we did not write): each
 * algorithm a TPM vendor CA may use verifies with the signer's key, and not with another key, a
 * flipped signature octet, or a changed TBS octet.
 */
const run = promisify(execFile);

const CASES = [
  { name: 'RSA PKCS#1 v1.5 SHA-256', key: ['-newkey', 'rsa:2048'], sig: ['-sha256'] },
  { name: 'RSA PKCS#1 v1.5 SHA-1 (older vendor roots)', key: ['-newkey', 'rsa:2048'], sig: ['-sha1'] },
  { name: 'RSASSA-PSS SHA-256, salt 32', key: ['-newkey', 'rsa:2048'], sig: ['-sha256', '-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:32'] },
  { name: 'RSASSA-PSS SHA-384, salt 48', key: ['-newkey', 'rsa:3072'], sig: ['-sha384', '-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:48'] },
  { name: 'ECDSA P-256 SHA-256', key: ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'], sig: ['-sha256'] },
  { name: 'ECDSA P-384 SHA-384', key: ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384'], sig: ['-sha384'] },
  { name: 'Ed25519', key: ['-newkey', 'ed25519'], sig: [] },
] as const;

let dir: string;
const certs = new Map<string, CertificateFields>();

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'cert-sig-'));
  await Promise.all(
    CASES.map(async (c, i) => {
      const out = join(dir, `${i}.der`);
      await run('openssl', ['req', '-x509', ...c.key, '-nodes', '-keyout', join(dir, `${i}.key`), '-subj', `/CN=case ${i}`, '-days', '1', ...c.sig, '-outform', 'DER', '-out', out]);
      certs.set(c.name, readCertificateFields(readFileSync(out)));
    }),
  );
}, 60_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('certificateSignatureValid on OpenSSL-made certificates', () => {
  for (const c of CASES) {
    it(`${c.name}: verifies with the signer key only, over the TBS exactly`, () => {
      const f = certs.get(c.name) as CertificateFields;
      const key = createPublicKey({ key: f.spki, format: 'der', type: 'spki' });
      expect(certificateSignatureValid(f, key)).toBe(true);
      const other = createPublicKey(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey);
      expect(certificateSignatureValid(f, other)).toBe(false);
      const sig = Buffer.from(f.signature);
      sig[sig.length - 1]! ^= 1;
      expect(certificateSignatureValid({ ...f, signature: sig }, key)).toBe(false);
      const tbs = Buffer.from(f.tbs);
      tbs[tbs.length - 1]! ^= 1;
      expect(certificateSignatureValid({ ...f, tbs }, key)).toBe(false);
    });
  }

  it('refuses a certificate whose outer signature algorithm differs from the one in its TBS, and an unknown algorithm', () => {
    const f = certs.get('RSA PKCS#1 v1.5 SHA-256') as CertificateFields;
    const key = createPublicKey({ key: f.spki, format: 'der', type: 'spki' });
    const sha384 = certs.get('ECDSA P-384 SHA-384') as CertificateFields;
    expect(() => certificateSignatureValid({ ...f, signatureAlgorithm: sha384.signatureAlgorithm }, key)).toThrow(CertificateSignatureError);
    // sha256WithRSAEncryption's OID with the last arc changed to 99.
    const unknown = Buffer.from(f.signatureAlgorithm);
    const at = unknown.indexOf(Buffer.from('2a864886f70d01010b', 'hex'));
    unknown[at + 8] = 99;
    expect(() => certificateSignatureValid({ ...f, signatureAlgorithm: unknown, tbsSignatureAlgorithm: unknown }, key)).toThrow(/unsupported signature algorithm 1\.2\.840\.113549\.1\.1\.99/);
  });
});
