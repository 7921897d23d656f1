import { describe, expect, it } from 'vitest';
import { ALG } from './constants.js';
import { kdfa } from './kdf.js';
import { makeCredential } from './make-credential.js';
import { parsePublic2b } from './public.js';
import { SWTPM } from './swtpm-fixtures.js';

/**
 * Known answers from outside this code: values a real TPM accepted (swtpm-fixtures.ts), and the KDFa
 * vector the TPM reference implementation checks in its self-test (Part 4, KdfTestData.h).
 */
describe('known answers', () => {
  it('KDFa matches the reference implementation self-test vector for SHA-1/256/384/512', () => {
    const key = Buffer.from('271fa08bbdc5060ec3dfa928ff9b73123a12da0c', 'hex');
    const u = Buffer.from('ce244f395dca7391', 'hex');
    const v = Buffer.from('da504031ddf12e83', 'hex');
    // The self-test's label is "KDFSELFTESTLABEL" with its NUL already in the buffer; kdfa adds it.
    const expected: [number, string][] = [
      [ALG.SHA1, '55b5a7184aa07423c47dae766c26a2377d7cf851'],
      [ALG.SHA256, 'bb0259e1c8ba607e6a2cd704b69a902e9ade84c4'],
      [ALG.SHA384, '1dce70c9113eb2dba47bd9cfc72bf46f45b09312'],
      [ALG.SHA512, '8be2c1b85b78569b9fa759f5857c56d684810fd3'],
    ];
    for (const [alg, out] of expected) expect(kdfa(alg, key, 'KDFSELFTESTLABEL', u, v, 160).toString('hex')).toBe(out);
  });

  it('makeCredential reproduces the ECC-EK credential TPM2_ActivateCredential accepted (KDFe, ECDH, KDFa, AES-CFB, HMAC)', () => {
    const out = makeCredential({
      ekPublic: parsePublic2b(SWTPM.ekEccPub2b),
      objectName: SWTPM.akName,
      credential: SWTPM.secret,
      random: { ephemeralPrivateKey: SWTPM.eccEphemeral },
    });
    expect(out.credentialBlob.toString('hex')).toBe(SWTPM.eccCredentialBlob.toString('hex'));
    expect(out.encryptedSecret.toString('hex')).toBe(SWTPM.eccEncryptedSecret.toString('hex'));
  });

  it('makeCredential reproduces the RSA-EK credential blob TPM2_ActivateCredential accepted for that seed', () => {
    const out = makeCredential({
      ekPublic: parsePublic2b(SWTPM.ekRsaPub2b),
      objectName: SWTPM.akName,
      credential: SWTPM.secret,
      random: { seed: SWTPM.rsaSeed },
    });
    expect(out.credentialBlob.toString('hex')).toBe(SWTPM.rsaCredentialBlob.toString('hex'));
    expect(out.encryptedSecret.length).toBe(2 + 256); // OAEP output: randomized, so only its size is fixed
  });
});
