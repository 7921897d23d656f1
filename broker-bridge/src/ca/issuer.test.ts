import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { createHash, ECDH, generateKeyPairSync, webcrypto } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../../common/clock.js';
import { createCa, type CaMaterial } from './ca-setup.js';
import { parseAndVerifyCsr } from './csr.js';
import { toPem } from '../../../common/der.js';
import { FileKeyCa } from './file-key-ca.js';
import { CertificateIssuer, type IssueRequest } from './issuer.js';
import { attime, buildCsr, deviceKey, expectCode, openssl } from './test-util.js';

x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);

const TD = 'fleet.example';
const START = Date.UTC(2026, 0, 1, 12, 0, 0, 750); // sub-second part must be truncated

describe('CertificateIssuer (file backend)', () => {
  let dir: string;
  let clock: ManualClock;
  let ca: CaMaterial;
  let issuer: CertificateIssuer;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'issuer-test-'));
    clock = new ManualClock(START);
    ca = await createCa({
      outDir: join(dir, 'ca'),
      clock,
      trustDomain: TD,
      root: { commonName: 'Test Root CA', organization: 'Fleet' },
      issuing: { commonName: 'Test Issuing CA', organization: 'Fleet' },
      backend: { kind: 'file', keyPath: join(dir, 'issuing-key.pem') },
    });
    issuer = new CertificateIssuer({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock, trustDomain: TD });
  });
  afterAll(async () => {
    await ca?.backend.close();
    await rm(dir, { recursive: true, force: true });
  });

  const request = (over: Partial<IssueRequest> = {}): IssueRequest => ({
    deviceId: 'dev-0001',
    publicKeySpki: deviceKey().spki,
    lifetimeSec: 86_400,
    backdateSec: 300,
    trustDomain: TD,
    ...over,
  });

  async function verifyWithOpenssl(certs: Buffer[], atMs: number): Promise<void> {
    const files: string[] = [];
    for (const [i, der] of certs.entries()) {
      const f = join(dir, `leaf-${Date.now()}-${i}.pem`);
      await writeFile(f, toPem(der, 'CERTIFICATE'));
      files.push(f);
    }
    const r = await openssl(['verify', '-attime', attime(atMs), '-CAfile', ca.files.root, '-untrusted', ca.files.issuing, ...files]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout.match(/: OK$/gm)?.length).toBe(certs.length);
  }

  it('issues a certificate with exactly the device profile', async () => {
    const key = deviceKey();
    const res = await issuer.issue(request({ deviceId: 'dev-0001', publicKeySpki: key.spki }));
    const cert = new x509.X509Certificate(res.certificateDer);
    const issuing = new x509.X509Certificate(ca.issuingCertificatePem);

    expect(cert.subject).toBe('CN=dev-0001');
    expect(cert.issuer).toBe(issuing.subject);
    // The issuer Name is the CA subject bytes, verbatim.
    const issuingSubjectDer = Buffer.from(issuing.subjectName.toArrayBuffer());
    expect(res.certificateDer.indexOf(issuingSubjectDer)).toBeGreaterThan(0);
    expect(Buffer.from(cert.publicKey.rawData).equals(key.spki)).toBe(true);

    const exts = cert.extensions;
    expect(exts.map((e) => e.type).sort()).toEqual(
      ['2.5.29.14', '2.5.29.15', '2.5.29.17', '2.5.29.19', '2.5.29.35', '2.5.29.37'].sort(),
    );
    const bc = cert.getExtension(x509.BasicConstraintsExtension);
    expect(bc?.ca).toBe(false);
    expect(bc?.critical).toBe(true);
    const ku = cert.getExtension(x509.KeyUsagesExtension);
    expect(ku?.usages).toBe(x509.KeyUsageFlags.digitalSignature);
    expect(ku?.critical).toBe(true);
    const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
    expect(eku?.usages).toEqual([x509.ExtendedKeyUsage.clientAuth]);
    expect(eku?.critical).toBe(false);
    const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
    expect(san?.names.toJSON()).toEqual([{ type: 'url', value: `spiffe://${TD}/device/dev-0001` }]);
    expect(san?.critical).toBe(false);
    expect(res.spiffeId).toBe(`spiffe://${TD}/device/dev-0001`);

    // SKI: SHA-1 over the subjectPublicKey BIT STRING value (the 65-byte point), RFC 5280 method 1.
    const point = key.spki.subarray(key.spki.length - 65);
    expect(cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId).toBe(createHash('sha1').update(point).digest('hex'));
    const caSki = issuing.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId;
    expect(caSki).toMatch(/^[0-9a-f]{40}$/);
    expect(cert.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId).toBe(caSki);

    // 128-bit positive serial: top bit set in the magnitude, so DER carries a 0x00 prefix.
    expect(res.serialNumber).toMatch(/^[89a-f][0-9a-f]{31}$/);
    expect(cert.serialNumber.replace(/^00/, '')).toBe(res.serialNumber);
    expect(res.certificateDer.indexOf(Buffer.concat([Buffer.from('021100', 'hex'), Buffer.from(res.serialNumber, 'hex')]))).toBeGreaterThan(0);

    // Validity: now (truncated to the second) - backdate, + lifetime.
    const nb = Math.floor(START / 1000) * 1000 - 300_000;
    expect(cert.notBefore.getTime()).toBe(nb);
    expect(cert.notAfter.getTime()).toBe(nb + 86_400_000);
    expect(res.notBefore.getTime()).toBe(nb);
    expect(res.notAfter.getTime()).toBe(nb + 86_400_000);

    expect(cert.signatureAlgorithm).toMatchObject({ name: 'ECDSA', hash: { name: 'SHA-256' } });
    expect(await cert.verify({ publicKey: issuing.publicKey, signatureOnly: true })).toBe(true);
    await verifyWithOpenssl([res.certificateDer], START);
  });

  it('follows the injected clock and honours an explicit notBefore', async () => {
    clock.advance(3_600_000);
    const r1 = await issuer.issue(request({ backdateSec: 0, lifetimeSec: 600 }));
    expect(r1.notBefore.getTime()).toBe(Math.floor((START + 3_600_000) / 1000) * 1000);
    expect(r1.notAfter.getTime() - r1.notBefore.getTime()).toBe(600_000);
    const explicit = new Date(START + 3_600_000 + 10_000);
    const r2 = await issuer.issue(request({ notBefore: explicit, backdateSec: 999, lifetimeSec: 60 }));
    expect(r2.notBefore.getTime()).toBe(Math.floor(explicit.getTime() / 1000) * 1000);
    expect(r2.notAfter.getTime()).toBe(r2.notBefore.getTime() + 60_000);
    clock.set(START);
  });

  it('issues from a verified CSR (x509-made and hand-made) and openssl accepts them', async () => {
    const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
    const keys = await webcrypto.subtle.generateKey(alg, false, ['sign', 'verify']);
    const xcsr = await x509.Pkcs10CertificateRequestGenerator.create({ name: 'CN=dev-x509', keys, signingAlgorithm: alg });
    const k384 = deviceKey('secp384r1');
    const handCsr = buildCsr({ ...k384, commonNames: ['dev-p384'], hash: 'sha384' });
    const out: Buffer[] = [];
    for (const input of [xcsr.toString('pem'), handCsr]) {
      const csr = parseAndVerifyCsr(input);
      const res = await issuer.issue(request({ deviceId: csr.commonName ?? '', publicKeySpki: csr.publicKeySpki }));
      expect(new x509.X509Certificate(res.certificateDer).subject).toBe(`CN=${csr.commonName}`);
      out.push(res.certificateDer);
    }
    await verifyWithOpenssl(out, START);
  });

  it('uses UTCTime before 2050 and GeneralizedTime from 2050 on', async () => {
    const c2 = new ManualClock(Date.UTC(2049, 11, 31, 12, 0, 0));
    const ca2 = await createCa({
      outDir: join(dir, 'ca2050'),
      clock: c2,
      trustDomain: TD,
      root: { commonName: 'Root 2049' },
      issuing: { commonName: 'Issuing 2049' },
      backend: { kind: 'file', keyPath: join(dir, 'issuing-2049.pem') },
    });
    try {
      const iss = new CertificateIssuer({ backend: ca2.backend, issuingCertificate: ca2.issuingCertificatePem, clock: c2, trustDomain: TD });
      const res = await iss.issue(request({ lifetimeSec: 2 * 86_400, backdateSec: 0 }));
      // Validity SEQUENCE: UTCTime 491231120000Z then GeneralizedTime 20500102120000Z.
      const validity = Buffer.concat([
        Buffer.from('3020170d', 'hex'),
        Buffer.from('491231120000Z'),
        Buffer.from('180f', 'hex'),
        Buffer.from('20500102120000Z'),
      ]);
      expect(res.certificateDer.indexOf(validity)).toBeGreaterThan(0);
      const cert = new x509.X509Certificate(res.certificateDer);
      expect(cert.notAfter.toISOString()).toBe('2050-01-02T12:00:00.000Z');
      const leaf = join(dir, 'leaf-2050.pem');
      await writeFile(leaf, toPem(res.certificateDer, 'CERTIFICATE'));
      const r = await openssl(['verify', '-attime', attime(c2.now() + 86_400_000), '-CAfile', ca2.files.root, '-untrusted', ca2.files.issuing, leaf]);
      expect(r.code, r.stdout + r.stderr).toBe(0);
    } finally {
      await ca2.backend.close();
    }
  });

  it('gives distinct, 128-bit, positive serials', async () => {
    const seen = new Set<string>();
    const spki = deviceKey().spki;
    const all = await Promise.all(Array.from({ length: 300 }, () => issuer.issue(request({ publicKeySpki: spki }))));
    for (const r of all) {
      expect(BigInt('0x' + r.serialNumber) >> 127n).toBe(1n);
      seen.add(r.serialNumber);
    }
    expect(seen.size).toBe(300);
  });

  it('rejects device ids that could escape a URI path or an MQTT topic', async () => {
    const bad = ['', 'a/b', 'a+b', '#', 'dev 1', 'dév', 'a\n', 'x'.repeat(65), '%2f', 'a?b', 'a:b', '$SYS'];
    for (const deviceId of bad) await expectCode(issuer.issue(request({ deviceId })), 'CA_BAD_REQUEST');
    await expectCode(issuer.issue(request({ deviceId: 42 as unknown as string })), 'CA_BAD_REQUEST');
    for (const deviceId of ['a', 'A.b_c-9', 'x'.repeat(64)]) {
      expect((await issuer.issue(request({ deviceId }))).spiffeId).toBe(`spiffe://${TD}/device/${deviceId}`);
    }
  });

  it('rejects malformed numbers, keys and dates as CA_BAD_REQUEST', async () => {
    await expectCode(issuer.issue(request({ lifetimeSec: 0 })), 'CA_BAD_REQUEST');
    await expectCode(issuer.issue(request({ lifetimeSec: 1.5 })), 'CA_BAD_REQUEST');
    await expectCode(issuer.issue(request({ backdateSec: -1 })), 'CA_BAD_REQUEST');
    await expectCode(issuer.issue(request({ notBefore: new Date(NaN) })), 'CA_BAD_REQUEST');
    await expectCode(issuer.issue(request({ trustDomain: 'Fleet.Example' })), 'CA_BAD_REQUEST');

    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'der' });
    await expectCode(issuer.issue(request({ publicKeySpki: rsa })), 'CA_BAD_REQUEST');
    const spki = deviceKey().spki;
    const offCurve = Buffer.from(spki);
    offCurve[offCurve.length - 1] = (offCurve[offCurve.length - 1] as number) ^ 1;
    await expectCode(issuer.issue(request({ publicKeySpki: offCurve })), 'CA_BAD_REQUEST');
    const compressed = Buffer.concat([
      Buffer.from('3039301306072a8648ce3d020106082a8648ce3d030107032200', 'hex'),
      ECDH.convertKey(spki.subarray(spki.length - 65), 'prime256v1', undefined, undefined, 'compressed') as Buffer,
    ]);
    await expectCode(issuer.issue(request({ publicKeySpki: compressed })), 'CA_BAD_REQUEST');
    await expectCode(issuer.issue(request({ publicKeySpki: Buffer.concat([spki, Buffer.from([0])]) })), 'CA_BAD_REQUEST');
    await expectCode(issuer.issue(request({ publicKeySpki: 'abc' as unknown as Buffer })), 'CA_BAD_REQUEST');
  });

  it('enforces the CA ceilings as CA_POLICY_DENIED', async () => {
    await expectCode(issuer.issue(request({ trustDomain: 'other.example' })), 'CA_POLICY_DENIED');
    await expectCode(issuer.issue(request({ lifetimeSec: 367 * 86_400 })), 'CA_POLICY_DENIED');
    await expectCode(issuer.issue(request({ backdateSec: 3_601 })), 'CA_POLICY_DENIED');
    await expectCode(issuer.issue(request({ notBefore: new Date(START - 7_200_000) })), 'CA_POLICY_DENIED');
    const strict = new CertificateIssuer({
      backend: ca.backend,
      issuingCertificate: ca.issuingCertificatePem,
      clock,
      trustDomain: TD,
      maxLifetimeSec: 3_600,
      maxBackdateSec: 0,
    });
    await expectCode(strict.issue(request({ lifetimeSec: 3_601, backdateSec: 0 })), 'CA_POLICY_DENIED');
    await expectCode(strict.issue(request({ lifetimeSec: 60, backdateSec: 1 })), 'CA_POLICY_DENIED');
    // Never outlive the issuing CA (5 years by default).
    const late = new ManualClock(START + 5 * 365 * 86_400_000 - 3_600_000);
    const lateIssuer = new CertificateIssuer({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock: late, trustDomain: TD });
    await expectCode(lateIssuer.issue(request({ lifetimeSec: 86_400 })), 'CA_POLICY_DENIED');
  });

  it('refuses a backend whose key is not the issuing CA key', async () => {
    const other = await FileKeyCa.create({ keyPath: join(dir, 'other-key.pem') });
    try {
      expect(() => new CertificateIssuer({ backend: other, issuingCertificate: ca.issuingCertificatePem, clock, trustDomain: TD })).toThrow(
        expect.objectContaining({ code: 'CA_CONFIG_INVALID' }),
      );
      for (const issuingCertificate of ['not a certificate', ca.rootCertificatePem]) {
        expect(() => new CertificateIssuer({ backend: ca.backend, issuingCertificate, clock, trustDomain: TD })).toThrow(
          expect.objectContaining({ code: 'CA_CONFIG_INVALID' }),
        );
      }
      expect(() => new CertificateIssuer({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock, trustDomain: 'UPPER' })).toThrow(
        expect.objectContaining({ code: 'CA_CONFIG_INVALID' }),
      );
    } finally {
      await other.close();
    }
  });

  it('maps a failing backend to CA_BACKEND_FAILED', async () => {
    const keyPath = join(dir, 'closing-key.pem');
    const ca3 = await createCa({
      outDir: join(dir, 'ca3'),
      clock,
      trustDomain: TD,
      root: { commonName: 'R3' },
      issuing: { commonName: 'I3' },
      backend: { kind: 'file', keyPath },
    });
    const iss = new CertificateIssuer({ backend: ca3.backend, issuingCertificate: ca3.issuingCertificatePem, clock, trustDomain: TD });
    await ca3.backend.close();
    await expectCode(iss.issue(request()), 'CA_BACKEND_FAILED');
  });
});
