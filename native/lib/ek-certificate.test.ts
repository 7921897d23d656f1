import { X509Certificate } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { seq, tlv } from '../../common/der.js';
import { OID } from './certificate-fields.js';
import { verifyEkCertificate, type EkTrustStore, type EkValidityPolicy } from './ek-certificate.js';
import { ekRefusal } from './ek-test-expect.js';
import {
  X509_V,
  attime,
  buildCertificate,
  defaultEkExtensions,
  ecKey,
  ext,
  opensslVerify as verifyWithOpenssl,
  rsaKey,
  testCa,
  testEkCertificate,
  type TestCa,
  type TestExtension,
  type TestKeyPair,
} from './ek-test-pki.js';

/**
 * RFC 5280 path validation of EK certificates, each case built at test time (ek-test-pki.ts) and
 * compared with `openssl verify` on the very same certificates. Every refused chain is valid in every
 * respect but the one the case names: the positive control next to it (same PKI, that one thing
 * fixed) is accepted by both.
 *
 * openssl runs with no -purpose (it knows no TCG EK purpose) and without -ignore_critical: OpenSSL
 * understands subjectAltName, so the critical TCG directoryName SAN needs no flag. The one exception
 * is a critical subjectDirectoryAttributes, which OpenSSL does not implement (error 34) and the EK
 * profile's TPM specification attribute may carry; that case says so.
 */
const DAY = 86_400_000;
const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

const pems = (cas: readonly TestCa[]) => cas.map((c) => c.pem);
const opensslVerify = (leaf: Buffer, roots: readonly TestCa[], intermediates: readonly TestCa[], flags: readonly string[] = []) =>
  verifyWithOpenssl(leaf, pems(roots), pems(intermediates), flags);

function trustOf(roots: readonly TestCa[], intermediates: readonly TestCa[] = [], ekValidity?: EkValidityPolicy): EkTrustStore {
  return { roots: roots.map((r) => r.pem), intermediates: intermediates.map((i) => i.pem), ...(ekValidity ? { ekValidity } : {}) };
}

const refusal = ekRefusal;

/** The EK profile's extensions with `replace` swapped in for the one of the same OID (or added). */
function ekExtensions(ek: TestKeyPair, issuer: TestCa, ...replace: TestExtension[]): TestExtension[] {
  const base = defaultEkExtensions(ek.publicKey, issuer.key.publicKey).filter((e) => !replace.some((r) => r.oid === e.oid));
  return [...base, ...replace];
}

describe('verifyEkCertificate: RFC 5280 path validation and the TCG EK profile, compared with openssl verify', () => {
  let root: TestCa;
  /** The vendor intermediate that issues EK certificates: pathLenConstraint 0, as vendors configure it. */
  let inter: TestCa;
  let eccEk: TestKeyPair;
  let rsaEk: TestKeyPair;
  let now: number;

  beforeAll(() => {
    now = Date.now();
    root = testCa({ name: [['O', 'Test TPM Vendor'], ['CN', 'EK Root']] });
    inter = testCa({ name: [['O', 'Test TPM Vendor'], ['CN', 'EK Intermediate']], issuer: root, pathLen: 0 });
    eccEk = ecKey('P-384');
    rsaEk = rsaKey();
  });

  describe('accepted chains', () => {
    for (const kind of ['ecc', 'rsa'] as const) {
      it(`a TCG-profile ${kind} EK certificate (empty subject, critical TCG subjectAltName) under both policies; openssl agrees without flags`, async () => {
        const ek = kind === 'ecc' ? eccEk : rsaEk;
        const leaf = testEkCertificate({ issuer: inter, ek: ek.publicKey });
        for (const ekValidity of ['ignore-expiry', 'strict'] as const) {
          const v = verifyEkCertificate(leaf, trustOf([root], [inter]), now, { ekValidity });
          expect(v.chain).toHaveLength(3);
          expect(v.chain[0]!.subject ?? '').toBe('');
          expect(v.chain[1]!.subject).toBe('O=Test TPM Vendor\nCN=EK Intermediate');
          expect(v.root).toBe('O=Test TPM Vendor\nCN=EK Root');
          expect(v.ekSpki.equals(ek.publicKey.export({ type: 'spki', format: 'der' }))).toBe(true);
          expect(v.acceptedOutsideValidity).toEqual([]);
        }
        expect(await opensslVerify(leaf, [root], [inter])).toEqual({ ok: true, errors: [] });
      });
    }

    it('the DER liberties real EK certificates take: explicit cA FALSE and explicit critical FALSE (Intel PTT)', async () => {
      const leaf = testEkCertificate({
        issuer: inter,
        ek: eccEk.publicKey,
        extensions: ekExtensions(eccEk, inter, ext.basicConstraints(false, undefined, { explicitFalse: true }), ext.tcgSubjectDirectoryAttributes(false, true)),
      });
      expect(verifyEkCertificate(leaf, trustOf([root], [inter]), now, { ekValidity: 'strict' }).acceptedOutsideValidity).toEqual([]);
      expect((await opensslVerify(leaf, [root], [inter])).ok).toBe(true);
    });

    it('an EK certificate issued by the root itself', async () => {
      const leaf = testEkCertificate({ issuer: root, ek: eccEk.publicKey });
      expect(verifyEkCertificate(leaf, trustOf([root]), now).chain).toHaveLength(2);
      expect((await opensslVerify(leaf, [root], [])).ok).toBe(true);
    });
  });

  describe('pathLenConstraint (RFC 5280 §6.1.4 (l), (m))', () => {
    it('an intermediate with pathlen:0 that signs a sub-CA which signs the EK certificate is refused (openssl: error 25)', async () => {
      const sub = testCa({ name: [['CN', 'Rogue Sub-CA']], issuer: inter });
      const leaf = testEkCertificate({ issuer: sub, ek: eccEk.publicKey });
      for (const ekValidity of ['ignore-expiry', 'strict'] as const) {
        const err = refusal(() => verifyEkCertificate(leaf, trustOf([root], [inter, sub]), now, { ekValidity }), 'EK_UNTRUSTED');
        const serial = new X509Certificate(sub.der).serialNumber.toLowerCase();
        expect(err.message).toBe(`CA certificate "CN=Rogue Sub-CA" (serial ${serial}) exceeds the pathLenConstraint of a CA above it`);
      }
      expect(await opensslVerify(leaf, [root], [inter, sub])).toEqual({ ok: false, errors: [X509_V.PATH_LENGTH_EXCEEDED] });
    });

    it('the same sub-CA below an intermediate with pathlen:1 is accepted (positive control; openssl agrees)', async () => {
      const inter1 = testCa({ name: [['CN', 'EK Intermediate pathlen 1']], issuer: root, pathLen: 1 });
      const sub = testCa({ name: [['CN', 'Sub-CA']], issuer: inter1 });
      const leaf = testEkCertificate({ issuer: sub, ek: eccEk.publicKey });
      expect(verifyEkCertificate(leaf, trustOf([root], [inter1, sub]), now).chain).toHaveLength(4);
      expect((await opensslVerify(leaf, [root], [inter1, sub])).ok).toBe(true);
    });

    it("the root's own pathlen:0 forbids any intermediate (openssl: error 25)", async () => {
      const root0 = testCa({ name: [['CN', 'EK Root pathlen 0']], pathLen: 0 });
      const i = testCa({ name: [['CN', 'Intermediate under pathlen-0 root']], issuer: root0 });
      const leaf = testEkCertificate({ issuer: i, ek: eccEk.publicKey });
      expect(refusal(() => verifyEkCertificate(leaf, trustOf([root0], [i]), now), 'EK_UNTRUSTED').message).toMatch(/"CN=Intermediate under pathlen-0 root".*pathLenConstraint/);
      expect(await opensslVerify(leaf, [root0], [i])).toEqual({ ok: false, errors: [X509_V.PATH_LENGTH_EXCEEDED] });
    });

    it('a self-issued key-rollover certificate below pathlen:0 does not count (openssl agrees)', async () => {
      // Same name as the pathlen:0 intermediate, new key, signed by the old key.
      const rollover = testCa({ name: inter.name, issuer: inter });
      const leaf = testEkCertificate({ issuer: rollover, ek: eccEk.publicKey });
      const v = verifyEkCertificate(leaf, trustOf([root], [inter, rollover]), now);
      expect(v.chain).toHaveLength(4);
      expect((await opensslVerify(leaf, [root], [inter, rollover])).ok).toBe(true);
    });
  });

  describe('CA certificates in the path', () => {
    it('an intermediate with basicConstraints cA=FALSE is refused (openssl: error 79, invalid CA)', async () => {
      const notCa = testCa({
        name: [['CN', 'Not a CA']],
        issuer: root,
        extensions: (k, ik) => [ext.basicConstraints(false), ext.keyUsage(['keyCertSign']), ext.subjectKeyIdentifier(k.publicKey), ext.authorityKeyIdentifier(ik)],
      });
      const leaf = testEkCertificate({ issuer: notCa, ek: eccEk.publicKey });
      expect(refusal(() => verifyEkCertificate(leaf, trustOf([root], [notCa]), now), 'EK_UNTRUSTED').message).toMatch(/^CA certificate "CN=Not a CA" \(serial [0-9a-f]+\) is not a CA \(basicConstraints cA is not TRUE\)$/);
      expect(await opensslVerify(leaf, [root], [notCa])).toEqual({ ok: false, errors: [X509_V.INVALID_CA] });
    });

    it('an intermediate without basicConstraints is refused (openssl: error 79)', async () => {
      const noBc = testCa({
        name: [['CN', 'No basicConstraints']],
        issuer: root,
        extensions: (k, ik) => [ext.keyUsage(['keyCertSign']), ext.subjectKeyIdentifier(k.publicKey), ext.authorityKeyIdentifier(ik)],
      });
      const leaf = testEkCertificate({ issuer: noBc, ek: eccEk.publicKey });
      expect(refusal(() => verifyEkCertificate(leaf, trustOf([root], [noBc]), now), 'EK_UNTRUSTED').message).toMatch(/has no basicConstraints extension/);
      expect(await opensslVerify(leaf, [root], [noBc])).toEqual({ ok: false, errors: [X509_V.INVALID_CA] });
    });

    it('an intermediate whose keyUsage lacks keyCertSign is refused (openssl: error 32, key usage does not include certificate signing)', async () => {
      const noSign = testCa({
        name: [['CN', 'No keyCertSign']],
        issuer: root,
        extensions: (k, ik) => [ext.basicConstraints(true), ext.keyUsage(['digitalSignature', 'cRLSign']), ext.subjectKeyIdentifier(k.publicKey), ext.authorityKeyIdentifier(ik)],
      });
      const leaf = testEkCertificate({ issuer: noSign, ek: eccEk.publicKey });
      expect(refusal(() => verifyEkCertificate(leaf, trustOf([root], [noSign]), now), 'EK_UNTRUSTED').message).toMatch(/"CN=No keyCertSign".*keyUsage lacks keyCertSign/);
      const o = await opensslVerify(leaf, [root], [noSign]);
      expect(o.ok).toBe(false);
      expect(o.errors).toContain(X509_V.KEYUSAGE_NO_CERTSIGN);
    });

    it('an intermediate with an unknown critical extension is refused (openssl: error 34)', async () => {
      const odd = testCa({
        name: [['CN', 'Odd CA']],
        issuer: root,
        extensions: (k, ik) => [ext.basicConstraints(true), ext.keyUsage(['keyCertSign']), ext.subjectKeyIdentifier(k.publicKey), ext.authorityKeyIdentifier(ik), ext.unknown(true)],
      });
      const leaf = testEkCertificate({ issuer: odd, ek: eccEk.publicKey });
      expect(refusal(() => verifyEkCertificate(leaf, trustOf([root], [odd]), now), 'EK_UNTRUSTED').message).toMatch(/"CN=Odd CA".*unsupported critical extension 1\.3\.6\.1\.4\.1\.55555\.1\.1/);
      expect(await opensslVerify(leaf, [root], [odd])).toEqual({ ok: false, errors: [X509_V.UNHANDLED_CRITICAL_EXTENSION] });
    });
  });

  describe('the EK certificate itself', () => {
    it('an unknown critical extension is refused, the same one non-critical is not (openssl: error 34 / OK)', async () => {
      const critical = testEkCertificate({ issuer: inter, ek: eccEk.publicKey, extensions: ekExtensions(eccEk, inter, ext.unknown(true)) });
      const nonCritical = testEkCertificate({ issuer: inter, ek: eccEk.publicKey, extensions: ekExtensions(eccEk, inter, ext.unknown(false)) });
      expect(refusal(() => verifyEkCertificate(critical, trustOf([root], [inter]), now), 'EK_UNTRUSTED').message).toMatch(
        /^EK certificate \(serial [0-9a-f]+, issuer "O=Test TPM Vendor, CN=EK Intermediate"\) has an unsupported critical extension 1\.3\.6\.1\.4\.1\.55555\.1\.1$/,
      );
      expect(await opensslVerify(critical, [root], [inter])).toEqual({ ok: false, errors: [X509_V.UNHANDLED_CRITICAL_EXTENSION] });
      expect(verifyEkCertificate(nonCritical, trustOf([root], [inter]), now).chain).toHaveLength(3);
      expect((await opensslVerify(nonCritical, [root], [inter])).ok).toBe(true);
    });

    it('a critical TCG subjectDirectoryAttributes is understood (openssl needs -ignore_critical only for this one)', async () => {
      const leaf = testEkCertificate({ issuer: inter, ek: eccEk.publicKey, extensions: ekExtensions(eccEk, inter, ext.tcgSubjectDirectoryAttributes(true)) });
      expect(verifyEkCertificate(leaf, trustOf([root], [inter]), now).chain).toHaveLength(3);
      // OpenSSL implements no subjectDirectoryAttributes, so it refuses it when critical (34); the
      // chain is otherwise valid, which -ignore_critical shows.
      expect(await opensslVerify(leaf, [root], [inter])).toEqual({ ok: false, errors: [X509_V.UNHANDLED_CRITICAL_EXTENSION] });
      expect((await opensslVerify(leaf, [root], [inter], ['-ignore_critical'])).ok).toBe(true);
    });

    it('extKeyUsage, when present, must contain tcg-kp-EKCertificate; the same rule openssl applies to the purposes it knows', async () => {
      const withEku = (oids: string[] | undefined) =>
        testEkCertificate({
          issuer: inter,
          ek: eccEk.publicKey,
          extensions: oids ? ekExtensions(eccEk, inter, ext.extKeyUsage(oids)) : defaultEkExtensions(eccEk.publicKey, inter.key.publicKey).filter((e) => e.oid !== OID.extKeyUsage),
        });
      const trust = trustOf([root], [inter]);
      const wrong = withEku([SERVER_AUTH]);
      expect(refusal(() => verifyEkCertificate(wrong, trust, now), 'EK_UNTRUSTED').message).toMatch(/has an extKeyUsage without tcg-kp-EKCertificate \(2\.23\.133\.8\.1\)$/);
      expect(verifyEkCertificate(withEku(undefined), trust, now).chain).toHaveLength(3);
      expect(verifyEkCertificate(withEku([SERVER_AUTH, OID.tcgKpEkCertificate]), trust, now).chain).toHaveLength(3);
      // openssl has no purpose for tcg-kp-EKCertificate: without -purpose it accepts the wrong-EKU
      // chain, i.e. the EKU is the only thing wrong with it.
      expect((await opensslVerify(wrong, [root], [inter])).ok).toBe(true);
      // With a purpose it knows (TLS client), openssl applies the same rule to the same chain:
      // EKU present without the purpose → error 26; purpose present, or no EKU at all → OK.
      expect(await opensslVerify(wrong, [root], [inter], ['-purpose', 'sslclient'])).toEqual({ ok: false, errors: [X509_V.INVALID_PURPOSE] });
      expect((await opensslVerify(withEku([CLIENT_AUTH]), [root], [inter], ['-purpose', 'sslclient'])).ok).toBe(true);
      expect((await opensslVerify(withEku(undefined), [root], [inter], ['-purpose', 'sslclient'])).ok).toBe(true);
    });

    it('keyUsage must be present and assert keyAgreement (ECC EK) or keyEncipherment (RSA EK); openssl, which knows no EK purpose, accepts these chains', async () => {
      const cases: [TestKeyPair, TestExtension | undefined, RegExp][] = [
        [eccEk, ext.keyUsage(['keyEncipherment']), /keyUsage lacks keyAgreement, which an ECC EK needs$/],
        [rsaEk, ext.keyUsage(['digitalSignature']), /keyUsage lacks keyEncipherment, which an RSA EK needs$/],
        [rsaEk, undefined, /has no keyUsage extension \(the EK profile requires keyEncipherment\)$/],
      ];
      for (const [ek, ku, message] of cases) {
        const extensions = ku ? ekExtensions(ek, inter, ku) : defaultEkExtensions(ek.publicKey, inter.key.publicKey).filter((e) => e.oid !== OID.keyUsage);
        const leaf = testEkCertificate({ issuer: inter, ek: ek.publicKey, extensions });
        expect(refusal(() => verifyEkCertificate(leaf, trustOf([root], [inter]), now), 'EK_UNTRUSTED').message).toMatch(message);
        expect((await opensslVerify(leaf, [root], [inter])).ok).toBe(true);
      }
    });

    it('an EK certificate that is a CA is refused', () => {
      const leaf = testEkCertificate({ issuer: inter, ek: eccEk.publicKey, extensions: ekExtensions(eccEk, inter, ext.basicConstraints(true)) });
      expect(refusal(() => verifyEkCertificate(leaf, trustOf([root], [inter]), now), 'EK_UNTRUSTED').message).toMatch(/is a CA certificate, not an EK certificate$/);
    });
  });

  describe('validity periods under each EK validity policy (openssl: -attime, and -no_check_time for ignore-expiry)', () => {
    it('an expired EK certificate: accepted and reported under ignore-expiry, EK_CERT_EXPIRED under strict (openssl: error 10)', async () => {
      const leaf = testEkCertificate({ issuer: inter, ek: eccEk.publicKey, notBefore: now - DAY, notAfter: now + DAY });
      const at = now + 2 * DAY;
      const trust = trustOf([root], [inter]);
      const accepted = verifyEkCertificate(leaf, trust, at);
      expect(accepted.acceptedOutsideValidity).toHaveLength(1);
      expect(accepted.acceptedOutsideValidity[0]).toMatch(/^EK certificate \(serial [0-9a-f]+, issuer "O=Test TPM Vendor, CN=EK Intermediate"\) expired at /);
      expect(verifyEkCertificate(leaf, trust, at, { ekValidity: 'ignore-expiry' }).acceptedOutsideValidity).toHaveLength(1);
      const err = refusal(() => verifyEkCertificate(leaf, trust, at, { ekValidity: 'strict' }), 'EK_CERT_EXPIRED');
      expect(err.message).toBe(`${accepted.acceptedOutsideValidity[0]} (EK validity policy 'strict')`);
      expect(await opensslVerify(leaf, [root], [inter], attime(at))).toEqual({ ok: false, errors: [X509_V.CERT_HAS_EXPIRED] });
      expect((await opensslVerify(leaf, [root], [inter], ['-no_check_time'])).ok).toBe(true);
      expect((await opensslVerify(leaf, [root], [inter], attime(now))).ok).toBe(true);
    });

    it('an expired vendor intermediate: the same, naming the intermediate (openssl: error 10)', async () => {
      const short = testCa({ name: [['CN', 'Short-lived Intermediate']], issuer: root, pathLen: 0, notBefore: now - DAY, notAfter: now + DAY });
      const leaf = testEkCertificate({ issuer: short, ek: rsaEk.publicKey });
      const at = now + 30 * DAY;
      expect(verifyEkCertificate(leaf, trustOf([root], [short]), at).acceptedOutsideValidity).toEqual([
        expect.stringMatching(/^CA certificate "CN=Short-lived Intermediate" \(serial [0-9a-f]+\) expired at /),
      ]);
      expect(refusal(() => verifyEkCertificate(leaf, trustOf([root], [short], 'strict'), at), 'EK_CERT_EXPIRED').message).toMatch(/"CN=Short-lived Intermediate".*expired at/);
      expect(await opensslVerify(leaf, [root], [short], attime(at))).toEqual({ ok: false, errors: [X509_V.CERT_HAS_EXPIRED] });
      expect((await opensslVerify(leaf, [root], [short], ['-no_check_time'])).ok).toBe(true);
    });

    it('an expired root: the same (openssl: error 10)', async () => {
      const oldRoot = testCa({ name: [['CN', 'Old Root']], notBefore: now - 10 * DAY, notAfter: now - DAY });
      const i = testCa({ name: [['CN', 'Intermediate of Old Root']], issuer: oldRoot, pathLen: 0 });
      const leaf = testEkCertificate({ issuer: i, ek: eccEk.publicKey });
      expect(verifyEkCertificate(leaf, trustOf([oldRoot], [i]), now).acceptedOutsideValidity).toEqual([expect.stringMatching(/^trusted root "CN=Old Root" .* expired at/)]);
      refusal(() => verifyEkCertificate(leaf, trustOf([oldRoot], [i]), now, { ekValidity: 'strict' }), 'EK_CERT_EXPIRED');
      expect(await opensslVerify(leaf, [oldRoot], [i])).toEqual({ ok: false, errors: [X509_V.CERT_HAS_EXPIRED] });
      expect((await opensslVerify(leaf, [oldRoot], [i], ['-no_check_time'])).ok).toBe(true);
    });

    it('a not-yet-valid EK certificate is treated like an expired one (openssl: error 9)', async () => {
      const leaf = testEkCertificate({ issuer: inter, ek: eccEk.publicKey, notBefore: now + DAY });
      expect(verifyEkCertificate(leaf, trustOf([root], [inter]), now).acceptedOutsideValidity).toEqual([expect.stringMatching(/^EK certificate .* is not valid before /)]);
      expect(refusal(() => verifyEkCertificate(leaf, trustOf([root], [inter]), now, { ekValidity: 'strict' }), 'EK_CERT_EXPIRED').message).toMatch(/is not valid before .*'strict'/);
      expect(await opensslVerify(leaf, [root], [inter], attime(now))).toEqual({ ok: false, errors: [X509_V.CERT_NOT_YET_VALID] });
      expect((await opensslVerify(leaf, [root], [inter], ['-no_check_time'])).ok).toBe(true);
    });

    it('under strict, a renewed intermediate (same name and key) next to the expired one gives a valid path (openssl agrees)', async () => {
      const key = ecKey();
      const expired = testCa({ name: [['CN', 'Renewed Intermediate']], key, issuer: root, pathLen: 0, notBefore: now - 10 * DAY, notAfter: now - DAY });
      const renewed = testCa({ name: [['CN', 'Renewed Intermediate']], key, issuer: root, pathLen: 0, notBefore: now - DAY });
      const leaf = testEkCertificate({ issuer: renewed, ek: eccEk.publicKey });
      const v = verifyEkCertificate(leaf, trustOf([root], [expired, renewed]), now, { ekValidity: 'strict' });
      expect(v.chain[1]!.der.equals(renewed.der)).toBe(true);
      expect((await opensslVerify(leaf, [root], [expired, renewed], attime(now))).ok).toBe(true);
      // Only the expired one configured: strict refuses, openssl too.
      refusal(() => verifyEkCertificate(leaf, trustOf([root], [expired]), now, { ekValidity: 'strict' }), 'EK_CERT_EXPIRED');
      expect(await opensslVerify(leaf, [root], [expired], attime(now))).toEqual({ ok: false, errors: [X509_V.CERT_HAS_EXPIRED] });
    });

    it('a path that breaks a constraint is EK_UNTRUSTED even when it is also expired', () => {
      const sub = testCa({ name: [['CN', 'Expired Rogue Sub-CA']], issuer: inter, notBefore: now - 10 * DAY, notAfter: now - DAY });
      const leaf = testEkCertificate({ issuer: sub, ek: eccEk.publicKey });
      expect(refusal(() => verifyEkCertificate(leaf, trustOf([root], [inter, sub]), now, { ekValidity: 'strict' }), 'EK_UNTRUSTED').message).toMatch(/pathLenConstraint/);
    });

    it("the policy comes from the options, else the trust store's ekValidity, else ignore-expiry", () => {
      const leaf = testEkCertificate({ issuer: inter, ek: eccEk.publicKey, notBefore: now - 2 * DAY, notAfter: now - DAY });
      refusal(() => verifyEkCertificate(leaf, trustOf([root], [inter], 'strict'), now), 'EK_CERT_EXPIRED');
      expect(verifyEkCertificate(leaf, trustOf([root], [inter], 'strict'), now, { ekValidity: 'ignore-expiry' }).acceptedOutsideValidity).toHaveLength(1);
      refusal(() => verifyEkCertificate(leaf, trustOf([root], [inter], 'ignore-expiry'), now, { ekValidity: 'strict' }), 'EK_CERT_EXPIRED');
      expect(verifyEkCertificate(leaf, trustOf([root], [inter]), now).acceptedOutsideValidity).toHaveLength(1);
    });
  });

  describe('untrusted and malformed certificates', () => {
    it('a chain to a root the fleet does not trust: EK_UNTRUSTED naming the EK certificate by issuer and serial (openssl: error 20)', async () => {
      const foreignRoot = testCa({ name: [['CN', 'Foreign Root']] });
      const leaf = testEkCertificate({ issuer: inter, ek: eccEk.publicKey, serial: 0x1234 });
      expect(refusal(() => verifyEkCertificate(leaf, trustOf([foreignRoot], [inter]), now), 'EK_UNTRUSTED').message).toBe(
        'EK certificate (serial 1234, issuer "O=Test TPM Vendor, CN=EK Intermediate") does not chain to a trusted TPM manufacturer root',
      );
      expect(await opensslVerify(leaf, [foreignRoot], [inter])).toEqual({ ok: false, errors: [X509_V.UNABLE_TO_GET_ISSUER_CERT_LOCALLY] });
    });

    it('an intermediate with the right name but another key: EK_UNTRUSTED saying which key identifier or signature fails (openssl refuses too)', async () => {
      const impostor = testCa({ name: inter.name, issuer: root, pathLen: 0 });
      const leaf = testEkCertificate({ issuer: inter, ek: eccEk.publicKey });
      expect(refusal(() => verifyEkCertificate(leaf, trustOf([root], [impostor]), now), 'EK_UNTRUSTED').message).toMatch(
        /^EK certificate .* does not chain to a trusted TPM manufacturer root: the authorityKeyIdentifier of EK certificate .* is not the subjectKeyIdentifier of CA certificate "O=Test TPM Vendor, CN=EK Intermediate"/,
      );
      expect((await opensslVerify(leaf, [root], [impostor])).ok).toBe(false);
      // Without key identifiers to tell them apart, the signature does.
      const noSki = testCa({ name: inter.name, issuer: root, extensions: () => [ext.basicConstraints(true, 0), ext.keyUsage(['keyCertSign'])] });
      expect(refusal(() => verifyEkCertificate(leaf, trustOf([root], [noSki]), now), 'EK_UNTRUSTED').message).toMatch(
        /^EK certificate .* does not chain to a trusted TPM manufacturer root: the signature of EK certificate .* does not verify with the key of CA certificate "O=Test TPM Vendor, CN=EK Intermediate"/,
      );
      expect((await opensslVerify(leaf, [root], [noSki])).ok).toBe(false);
    });

    it('bytes that are not a certificate, or an EK certificate with a malformed or duplicated extension: EK_CERT_INVALID', () => {
      const trust = trustOf([root], [inter]);
      refusal(() => verifyEkCertificate(Buffer.from('not a certificate'), trust, now), 'EK_CERT_INVALID');
      const badKu: TestExtension = { oid: OID.keyUsage, critical: true, value: seq(tlv(0x05, Buffer.alloc(0))) };
      const malformed = testEkCertificate({ issuer: inter, ek: eccEk.publicKey, extensions: ekExtensions(eccEk, inter, badKu) });
      expect(refusal(() => verifyEkCertificate(malformed, trust, now), 'EK_CERT_INVALID').message).toMatch(/^EK certificate is not a readable X\.509 certificate: keyUsage/);
      const twice = testEkCertificate({ issuer: inter, ek: eccEk.publicKey, extensions: [...defaultEkExtensions(eccEk.publicKey, inter.key.publicKey), ext.extKeyUsage([OID.tcgKpEkCertificate])] });
      expect(refusal(() => verifyEkCertificate(twice, trust, now), 'EK_CERT_INVALID').message).toMatch(/extension 2\.5\.29\.37 appears twice/);
    });

    it('a certificate built with the wrong signing key for its issuer is never accepted as a link', () => {
      const stranger = ecKey();
      const der = buildCertificate({
        subject: [],
        issuer: inter.name,
        serial: 77,
        notBefore: now - DAY,
        notAfter: now + DAY,
        publicKey: eccEk.publicKey,
        signingKey: stranger.privateKey,
        extensions: defaultEkExtensions(eccEk.publicKey, inter.key.publicKey),
      });
      expect(refusal(() => verifyEkCertificate(der, trustOf([root], [inter]), now), 'EK_UNTRUSTED').message).toMatch(/signature of EK certificate \(serial 4d,.*does not verify/);
    });
  });
});
