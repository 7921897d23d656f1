import { X509Certificate, createPublicKey } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EnrollmentRejection, checkEk, checkEkKind } from '../../broker-bridge/src/enrollment/evidence.js';
import { verifyEkCertificate, type EkTrustStore } from '../../native/lib/ek-certificate.js';
import { X509_V, attime, opensslVerify, testCa, testEkCertificate } from '../../native/lib/ek-test-pki.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import type { EkKind, Tpm } from '../../native/lib/tpm.js';
import type { TpmPublic } from '../../native/lib/wire/public.js';
import { verifyTpmEk } from '../../provisioning/src/ek.js';
import { StationError } from '../../provisioning/src/errors.js';
import { startTpm, type TestTpm } from '../harness/index.js';

/**
 * The EK chain rules on a real TPM's EKs (swtpm, manufactured with swtpm_localca's root and
 * intermediate): the bridge's checkEk/checkEkKind and the station's verifyTpmEk, with openssl verify
 * as the oracle on the same certificates. The unit cases (every RFC 5280 constraint) are in
 * native/lib/ek-certificate.test.ts.
 */
const DAY = 86_400_000;

interface RealEk {
  readonly certificate: Buffer;
  readonly public: TpmPublic;
  readonly spki: Buffer;
}

function rejection(fn: () => unknown): EnrollmentRejection {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(EnrollmentRejection);
  return caught as EnrollmentRejection;
}

describe('EK chain checks on a real TPM (swtpm): bridge checkEk/checkEkKind and the station', () => {
  let sw: TestTpm;
  let tpm: Tpm;
  let trust: EkTrustStore;
  const eks = new Map<EkKind, RealEk>();

  beforeAll(async () => {
    sw = await startTpm();
    tpm = await NativeTpm.open(sw.tcti);
    trust = { roots: [sw.manufacturerRootPem], intermediates: [sw.manufacturerIntermediatePem] };
    for (const kind of ['rsa', 'ecc'] as const) {
      const certificate = (await tpm.readEkCertificate(kind))!;
      const ek = await tpm.createEk(kind);
      eks.set(kind, { certificate, public: ek.public, spki: ek.spki });
      await tpm.flush(ek);
    }
  });
  afterAll(async () => {
    await tpm?.close();
    await sw?.stop();
  });

  const ek = (kind: EkKind) => eks.get(kind)!;
  const rootSubject = () => new X509Certificate(sw.manufacturerRootPem).subject;

  it('the swtpm RSA and ECC EK chains are accepted under both policies, by checkEk and by openssl', async () => {
    for (const kind of ['rsa', 'ecc'] as const) {
      for (const ekValidity of ['ignore-expiry', 'strict'] as const) {
        const r = checkEk(ek(kind).certificate, ek(kind).public, trust, Date.now(), { ekValidity });
        expect(r.root).toBe(rootSubject());
        expect(r.acceptedOutsideValidity).toEqual([]);
      }
      expect(await opensslVerify(ek(kind).certificate, [sw.manufacturerRootPem], [sw.manufacturerIntermediatePem])).toEqual({ ok: true, errors: [] });
    }
  });

  it('after every certificate of the chain expired: accepted under ignore-expiry, refused under strict (EK_UNTRUSTED on the wire, carrying EK_CERT_EXPIRED)', () => {
    // swtpm_localca issues everything until 9999-12-31. openssl cannot evaluate an instant past year
    // 9999 (-attime then gives error 13, a format error in notAfter), so the openssl comparison of
    // expired certificates is in native/lib/ek-certificate.test.ts, on shorter-lived chains.
    const at = Date.UTC(10_000, 0, 2);
    for (const kind of ['rsa', 'ecc'] as const) {
      const accepted = checkEk(ek(kind).certificate, ek(kind).public, trust, at);
      expect(accepted.acceptedOutsideValidity).toEqual([
        expect.stringMatching(/^EK certificate \(serial [0-9a-f]+, issuer "CN=swtpm-localca"\) expired at 9999-12-31T23:59:59\.000Z$/),
        expect.stringMatching(/^CA certificate "CN=swtpm-localca" .* expired at/),
        expect.stringMatching(/^trusted root "CN=swtpm-localca-rootca" .* expired at/),
      ]);
      const err = rejection(() => checkEk(ek(kind).certificate, ek(kind).public, trust, at, { ekValidity: 'strict' }));
      expect(err.code).toBe('EK_CERT_EXPIRED');
      expect(err.message).toMatch(/^EK_CERT_EXPIRED: EK certificate \(serial [0-9a-f]+, issuer "CN=swtpm-localca"\) expired at .*'strict'\)$/);
    }
  });

  it('before the certificates were issued (a clock behind): treated the same, as not yet valid', async () => {
    const leaf = new X509Certificate(ek('ecc').certificate);
    const at = Date.parse(leaf.validFrom) - DAY;
    expect(checkEk(ek('ecc').certificate, ek('ecc').public, trust, at).acceptedOutsideValidity[0]).toMatch(/^EK certificate .* is not valid before /);
    expect(rejection(() => checkEk(ek('ecc').certificate, ek('ecc').public, trust, at, { ekValidity: 'strict' })).message).toMatch(/^EK_CERT_EXPIRED: .*is not valid before/);
    expect(await opensslVerify(ek('ecc').certificate, [sw.manufacturerRootPem], [sw.manufacturerIntermediatePem], attime(at))).toEqual({ ok: false, errors: [X509_V.CERT_NOT_YET_VALID] });
  });

  it('the station: verifyTpmEk accepts an expired chain under ignore-expiry; under strict it refuses STATION_EK_UNTRUSTED with details.cause EK_CERT_EXPIRED', async () => {
    const at = Date.UTC(10_000, 0, 2);
    const verified = await verifyTpmEk(tpm, trust, at);
    expect(verified.kind).toBe('ecc');
    expect(verified.spki.equals(ek('ecc').spki)).toBe(true);

    const strict = { ...trust, ekValidity: 'strict' as const };
    for (const refuse of [() => verifyTpmEk(tpm, strict, at), () => verifyTpmEk(tpm, trust, at, { ekValidity: 'strict' })]) {
      const err = await refuse().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(StationError);
      expect(err).toMatchObject({
        code: 'STATION_EK_UNTRUSTED',
        details: { cause: 'EK_CERT_EXPIRED', refusals: [{ kind: 'ecc', code: 'EK_CERT_EXPIRED' }, { kind: 'rsa', code: 'EK_CERT_EXPIRED' }] },
      });
      expect((err as StationError).message).toMatch(/^EK certificate refused: ecc: \[EK_CERT_EXPIRED\] EK certificate \(serial .*; rsa: \[EK_CERT_EXPIRED\] /);
    }
  });

  it('the real EK re-certified below a pathlen:0 vendor intermediate through a sub-CA: checkEk refuses (EK_UNTRUSTED), openssl too (error 25); without the sub-CA it is accepted', async () => {
    const root = testCa({ name: [['CN', 'Vendor Root']] });
    const inter = testCa({ name: [['CN', 'Vendor EK CA']], issuer: root, pathLen: 0 });
    const sub = testCa({ name: [['CN', 'Rogue Sub-CA']], issuer: inter });
    const ecc = ek('ecc');
    const ekKey = createPublicKey({ key: ecc.spki, format: 'der', type: 'spki' });
    const vendorTrust = { roots: [root.pem], intermediates: [inter.pem, sub.pem] };

    const direct = testEkCertificate({ issuer: inter, ek: ekKey });
    expect(checkEk(direct, ecc.public, vendorTrust, Date.now()).root).toBe('CN=Vendor Root');
    expect((await opensslVerify(direct, [root.pem], [inter.pem])).ok).toBe(true);

    const viaSub = testEkCertificate({ issuer: sub, ek: ekKey });
    const err = rejection(() => checkEk(viaSub, ecc.public, vendorTrust, Date.now()));
    expect(err.code).toBe('EK_UNTRUSTED');
    expect(err.message).toMatch(/^EK_UNTRUSTED: CA certificate "CN=Rogue Sub-CA" \(serial [0-9a-f]+\) exceeds the pathLenConstraint of a CA above it$/);
    expect(await opensslVerify(viaSub, [root.pem], [inter.pem, sub.pem])).toEqual({ ok: false, errors: [X509_V.PATH_LENGTH_EXCEEDED] });
    // The station's verifier reaches the same verdict on the same bytes.
    expect(() => verifyEkCertificate(viaSub, vendorTrust, Date.now())).toThrow(expect.objectContaining({ code: 'EK_UNTRUSTED' }));
  });

  it('checkEkKind: an RSA EK sent as ecc, and an ECC EK sent as rsa, are EK_MISMATCH; the true kinds pass', () => {
    expect(() => checkEkKind('rsa', ek('rsa').public)).not.toThrow();
    expect(() => checkEkKind('ecc', ek('ecc').public)).not.toThrow();
    const rsaAsEcc = rejection(() => checkEkKind('ecc', ek('rsa').public));
    expect(rsaAsEcc.code).toBe('EK_MISMATCH');
    expect(rsaAsEcc.message).toBe("ekKind is 'ecc' but the EK sent is an RSA key");
    const eccAsRsa = rejection(() => checkEkKind('rsa', ek('ecc').public));
    expect(eccAsRsa.code).toBe('EK_MISMATCH');
    expect(eccAsRsa.message).toBe("ekKind is 'rsa' but the EK sent is an ECC key");
  });
});
