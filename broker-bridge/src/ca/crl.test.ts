import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { webcrypto } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../../common/clock.js';
import { createCa, type CaMaterial } from './ca-setup.js';
import { CrlSigner } from './crl.js';
import { toPem } from '../../../common/der.js';
import { CertificateIssuer } from './issuer.js';
import { attime, deviceKey, expectCode, openssl } from './test-util.js';

x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);

const TD = 'fleet.example';

describe('CrlSigner', () => {
  let dir: string;
  let ca: CaMaterial;
  let issuer: CertificateIssuer;
  let crls: CrlSigner;
  const clock = new ManualClock(Date.UTC(2026, 5, 1, 8, 30, 15, 400));

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'crl-test-'));
    ca = await createCa({
      outDir: join(dir, 'ca'),
      clock,
      trustDomain: TD,
      root: { commonName: 'CRL Root' },
      issuing: { commonName: 'CRL Issuing' },
      backend: { kind: 'file', keyPath: join(dir, 'issuing-key.pem') },
    });
    issuer = new CertificateIssuer({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock, trustDomain: TD });
    crls = new CrlSigner({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock });
  });
  afterAll(async () => {
    await ca?.backend.close();
    await rm(dir, { recursive: true, force: true });
  });

  const issue = (deviceId: string) =>
    issuer.issue({ deviceId, publicKeySpki: deviceKey().spki, lifetimeSec: 86_400, backdateSec: 60, trustDomain: TD });

  it('signs a v2 CRL that openssl verifies and that revokes exactly the listed certificates', async () => {
    const revoked = await issue('dev-revoked');
    const other = await issue('dev-superseded');
    const good = await issue('dev-good');
    const revokedAt = new Date(clock.now() - 5_000);
    const res = await crls.sign({
      crlNumber: 42,
      nextUpdateSec: 7_200,
      revoked: [
        { serialNumber: revoked.serialNumber, revokedAt, reason: 'keyCompromise' },
        { serialNumber: other.serialNumber.toUpperCase(), revokedAt, reason: 'superseded' },
        { serialNumber: '0102', revokedAt },
      ],
    });
    const thisUpdate = Math.floor(clock.now() / 1000) * 1000;
    expect(res.thisUpdate.getTime()).toBe(thisUpdate);
    expect(res.nextUpdate.getTime()).toBe(thisUpdate + 7_200_000);
    expect(res.crlNumber).toBe(42n);

    const crlPath = join(dir, 'crl.pem');
    await writeFile(crlPath, toPem(res.crlDer, 'X509 CRL'));
    const v = await openssl(['crl', '-in', crlPath, '-CAfile', ca.files.chain, '-verify', '-noout']);
    expect(v.code, v.stderr).toBe(0);
    expect(v.stderr + v.stdout).toMatch(/verify OK/);

    const text = (await openssl(['crl', '-in', crlPath, '-noout', '-text'])).stdout;
    expect(text).toMatch(/Version 2/);
    expect(text).toMatch(/X509v3 CRL Number:\s*\n\s*42/);
    expect(text).toMatch(/Key Compromise/);
    expect(text).toMatch(/Superseded/);

    const crl = new x509.X509Crl(res.crlDer);
    expect(crl.issuer).toBe(new x509.X509Certificate(ca.issuingCertificatePem).subject);
    expect(crl.entries.map((e) => e.serialNumber.replace(/^00/, ''))).toEqual([revoked.serialNumber, other.serialNumber, '0102']);
    expect(crl.entries.map((e) => e.reason)).toEqual([x509.X509CrlReason.keyCompromise, x509.X509CrlReason.superseded, undefined]);
    expect(crl.entries[0]?.revocationDate.getTime()).toBe(Math.floor(revokedAt.getTime() / 1000) * 1000);
    const aki = crl.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId;
    expect(aki).toBe(new x509.X509Certificate(ca.issuingCertificatePem).getExtension(x509.SubjectKeyIdentifierExtension)?.keyId);

    // openssl path validation with the CRL: the revoked leaf fails, the other one passes.
    const leafPath = async (name: string, der: Buffer) => {
      const p = join(dir, name);
      await writeFile(p, toPem(der, 'CERTIFICATE'));
      return p;
    };
    const check = (leaf: string) =>
      openssl(['verify', '-attime', attime(clock.now()), '-crl_check', '-CRLfile', crlPath, '-CAfile', ca.files.root, '-untrusted', ca.files.issuing, leaf]);
    const bad = await check(await leafPath('revoked.pem', revoked.certificateDer));
    expect(bad.code).not.toBe(0);
    expect(bad.stdout + bad.stderr).toMatch(/certificate revoked/);
    const ok = await check(await leafPath('good.pem', good.certificateDer));
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
  });

  it('signs an empty CRL (no revokedCertificates field)', async () => {
    const res = await crls.sign({ crlNumber: 1n, nextUpdateSec: 60, revoked: [] });
    const crlPath = join(dir, 'empty.pem');
    await writeFile(crlPath, toPem(res.crlDer, 'X509 CRL'));
    const v = await openssl(['crl', '-in', crlPath, '-CAfile', ca.files.chain, '-verify', '-noout', '-text']);
    expect(v.code, v.stderr).toBe(0);
    expect(v.stdout).toMatch(/No Revoked Certificates/);
  });

  it('signs a delta CRL (RFC 5280 5.2.4) that openssl reads as one: critical Delta CRL Indicator with the base number', async () => {
    const revokedAt = new Date(clock.now() - 1_000);
    const res = await crls.sign({
      crlNumber: 57,
      nextUpdateSec: 3_600,
      baseCrlNumber: 50,
      revoked: [
        { serialNumber: '5a01', revokedAt, reason: 'keyCompromise' },
        { serialNumber: '5a02', revokedAt, reason: 'removeFromCRL' },
      ],
    });
    expect(res.crlNumber).toBe(57n);
    expect(res.baseCrlNumber).toBe(50n);
    const crlPath = join(dir, 'delta.der');
    await writeFile(crlPath, res.crlDer);
    const v = await openssl(['crl', '-inform', 'DER', '-in', crlPath, '-CAfile', ca.files.chain, '-verify', '-noout']);
    expect(v.code, v.stderr).toBe(0);
    expect(v.stderr + v.stdout).toMatch(/verify OK/);
    const text = (await openssl(['crl', '-inform', 'DER', '-in', crlPath, '-noout', '-text'])).stdout;
    expect(text).toMatch(/X509v3 Delta CRL Indicator: critical\s*\n\s*50\s*\n/);
    expect(text).toMatch(/X509v3 CRL Number:\s*\n\s*57/);
    expect(text).toMatch(/Key Compromise/);
    expect(text).toMatch(/Remove From CRL/);
    // A complete CRL has no indicator.
    const complete = await crls.sign({ crlNumber: 57, nextUpdateSec: 3_600, revoked: [] });
    await writeFile(join(dir, 'complete.der'), complete.crlDer);
    expect((await openssl(['crl', '-inform', 'DER', '-in', join(dir, 'complete.der'), '-noout', '-text'])).stdout).not.toMatch(/Delta CRL Indicator/);
    expect(complete.baseCrlNumber).toBeUndefined();
  });

  it('signs a 100,000-entry complete CRL that openssl verifies', async () => {
    const revokedAt = new Date(clock.now() - 1_000);
    const revoked = Array.from({ length: 100_000 }, (_, i) => ({ serialNumber: (0x10000000000000000000n + BigInt(i)).toString(16), revokedAt }));
    const res = await crls.sign({ crlNumber: 9, nextUpdateSec: 3_600, revoked });
    const crlPath = join(dir, 'big.der');
    await writeFile(crlPath, res.crlDer);
    const v = await openssl(['crl', '-inform', 'DER', '-in', crlPath, '-CAfile', ca.files.chain, '-verify', '-noout']);
    expect(v.code, v.stderr).toBe(0);
    console.log(`CrlSigner: complete CRL with 100,000 entries (16-byte serials, no reason): ${res.crlDer.length} bytes`);
  });

  it('rejects malformed requests with CA_BAD_REQUEST', async () => {
    const at = new Date(clock.now());
    await expectCode(crls.sign({ crlNumber: -1, nextUpdateSec: 60, revoked: [] }), 'CA_BAD_REQUEST');
    await expectCode(crls.sign({ crlNumber: 1.5, nextUpdateSec: 60, revoked: [] }), 'CA_BAD_REQUEST');
    await expectCode(crls.sign({ crlNumber: 1, nextUpdateSec: 0, revoked: [] }), 'CA_BAD_REQUEST');
    for (const serialNumber of ['', '0', 'xyz', 'a'.repeat(41)]) {
      await expectCode(crls.sign({ crlNumber: 1, nextUpdateSec: 60, revoked: [{ serialNumber, revokedAt: at }] }), 'CA_BAD_REQUEST');
    }
    await expectCode(
      crls.sign({ crlNumber: 1, nextUpdateSec: 60, revoked: [{ serialNumber: 'ab', revokedAt: at }, { serialNumber: '00AB', revokedAt: at }] }),
      'CA_BAD_REQUEST',
    );
    await expectCode(crls.sign({ crlNumber: 1, nextUpdateSec: 60, revoked: [{ serialNumber: 'ab', revokedAt: new Date(NaN) }] }), 'CA_BAD_REQUEST');
    await expectCode(
      crls.sign({ crlNumber: 1, nextUpdateSec: 60, revoked: [{ serialNumber: 'ab', revokedAt: at, reason: 'constructor' as 'superseded' }] }),
      'CA_BAD_REQUEST',
    );
    // Deltas: the base comes before the delta; removeFromCRL only in a delta (RFC 5280 5.3.1).
    await expectCode(crls.sign({ crlNumber: 5, baseCrlNumber: 5, nextUpdateSec: 60, revoked: [] }), 'CA_BAD_REQUEST');
    await expectCode(crls.sign({ crlNumber: 5, baseCrlNumber: -1, nextUpdateSec: 60, revoked: [] }), 'CA_BAD_REQUEST');
    await expectCode(crls.sign({ crlNumber: 5, nextUpdateSec: 60, revoked: [{ serialNumber: 'ab', revokedAt: at, reason: 'removeFromCRL' }] }), 'CA_BAD_REQUEST');
    expect((await crls.sign({ crlNumber: 5, baseCrlNumber: 4, nextUpdateSec: 60, revoked: [{ serialNumber: 'ab', revokedAt: at, reason: 'removeFromCRL' }] })).baseCrlNumber).toBe(4n);
  });
});
