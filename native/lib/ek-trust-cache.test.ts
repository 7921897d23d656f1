import { sign } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { TAG, bytesOf, expectTlv, readSingle, seq, tlv } from '../../common/der.js';
import { EkCertificateError, verifyEkCertificate, type EkCertificateErrorCode, type EkTrustStore } from './ek-certificate.js';
import { ecKey, rsaKey, testCa, testEkCertificate, type TestCa } from './ek-test-pki.js';

/**
 * The trust anchors a store lists are parsed once and reused while the store lists the same
 * certificates; a store whose arrays (or Buffers) were changed in place is parsed again, never
 * answered from the stale parse. And the EK key read straight from the certificate's bytes is held
 * to what decoding it would check.
 */
const codeOf = (fn: () => unknown): EkCertificateErrorCode | undefined => {
  try {
    fn();
    return undefined;
  } catch (e) {
    expect(e).toBeInstanceOf(EkCertificateError);
    return (e as EkCertificateError).code;
  }
};

/** `leaf` with one bit of its certified EC point flipped (off the curve), signed again by `issuer`. */
function withPointOffCurve(leaf: Buffer, point: Buffer, issuer: TestCa): Buffer {
  const cert = readSingle(leaf, TAG.SEQUENCE, 'Certificate');
  const tbsTlv = expectTlv(leaf, cert.contentStart, cert.end, TAG.SEQUENCE, 'TBSCertificate');
  const tbs = Buffer.from(bytesOf(leaf, tbsTlv));
  const at = tbs.indexOf(point);
  expect(at).toBeGreaterThan(0);
  tbs[at + point.length - 1]! ^= 1;
  const algId = bytesOf(leaf, expectTlv(leaf, tbsTlv.end, cert.end, TAG.SEQUENCE, 'signatureAlgorithm'));
  return seq(tbs, algId, tlv(TAG.BIT_STRING, Buffer.from([0]), sign('sha256', tbs, issuer.key.privateKey)));
}

describe('EK trust anchors: parsed once per store, re-parsed when the store changes', () => {
  let root: TestCa;
  let inter: TestCa;
  let foreignRoot: TestCa;
  let leaf: Buffer;
  const now = Date.now();

  beforeAll(() => {
    root = testCa({ name: [['CN', 'Cache Root']] });
    inter = testCa({ name: [['CN', 'Cache Intermediate']], issuer: root, pathLen: 0 });
    // Same name and DER length as the real root (ECDSA signatures vary in length), so it can replace it in place.
    do foreignRoot = testCa({ name: [['CN', 'Cache Root']] });
    while (foreignRoot.der.length !== root.der.length);
    leaf = testEkCertificate({ issuer: inter, ek: ecKey('P-384').publicKey });
  });

  it('a store whose root array is changed in place is answered from the new roots, and back', () => {
    const roots = [root.pem];
    const store: EkTrustStore = { roots, intermediates: [inter.pem] };
    expect(verifyEkCertificate(leaf, store, now).root).toBe('CN=Cache Root');
    roots[0] = foreignRoot.pem;
    expect(codeOf(() => verifyEkCertificate(leaf, store, now))).toBe('EK_UNTRUSTED');
    roots[0] = root.pem;
    expect(verifyEkCertificate(leaf, store, now).chain).toHaveLength(3);
    (store.intermediates as string[]).length = 0;
    expect(codeOf(() => verifyEkCertificate(leaf, store, now))).toBe('EK_UNTRUSTED');
  });

  it('a root given as a Buffer and overwritten in place is parsed again', () => {
    const der = Buffer.from(root.der);
    const store: EkTrustStore = { roots: [der], intermediates: [inter.der] };
    expect(verifyEkCertificate(leaf, store, now).chain).toHaveLength(3);
    der.set(foreignRoot.der);
    expect(codeOf(() => verifyEkCertificate(leaf, store, now))).toBe('EK_UNTRUSTED');
    der.set(root.der);
    expect(verifyEkCertificate(leaf, store, now).chain).toHaveLength(3);
  });

  it('an ECC EK certificate whose point is off the curve is EK_CERT_INVALID, an RSA one still verifies', () => {
    const ek = ecKey('P-384').publicKey;
    const good = testEkCertificate({ issuer: inter, ek });
    const point = ek.export({ type: 'spki', format: 'der' }).subarray(-97);
    const bad = withPointOffCurve(good, point, inter);
    const store: EkTrustStore = { roots: [root.pem], intermediates: [inter.pem] };
    expect(verifyEkCertificate(good, store, now).ekSpki.equals(ek.export({ type: 'spki', format: 'der' }))).toBe(true);
    expect(codeOf(() => verifyEkCertificate(bad, store, now))).toBe('EK_CERT_INVALID');
    expect(() => verifyEkCertificate(bad, store, now)).toThrow(/holds a public key node:crypto cannot read$/);
    const rsa = rsaKey().publicKey;
    expect(verifyEkCertificate(testEkCertificate({ issuer: inter, ek: rsa }), store, now).ekSpki.equals(rsa.export({ type: 'spki', format: 'der' }))).toBe(true);
  });
});
