import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { webcrypto } from 'node:crypto';
import { access, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../../common/clock.js';
import { createCa, importCa } from './ca-setup.js';
import { attime, expectCode, openssl } from './test-util.js';

x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);

const TD = 'fleet.example';

describe('CA set-up (file backend)', () => {
  let dir: string;
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ca-setup-test-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('creates a root (pathLen 1) and an issuing CA (pathLen 0) and writes root/issuing/chain', async () => {
    const outDir = join(dir, 'a');
    const ca = await createCa({
      outDir,
      clock,
      trustDomain: TD,
      root: { commonName: 'Fleet Root CA', organization: 'Example Corp', country: 'DE' },
      issuing: { commonName: 'Fleet Issuing CA 1', organization: 'Example Corp', organizationalUnit: 'Devices' },
      backend: { kind: 'file', keyPath: join(dir, 'a-issuing-key.pem') },
      rootLifetimeSec: 20 * 365 * 86_400,
      issuingLifetimeSec: 2 * 365 * 86_400,
      backdateSec: 60,
    });
    try {
      expect(await readFile(ca.files.root, 'utf8')).toBe(ca.rootCertificatePem);
      expect(await readFile(ca.files.issuing, 'utf8')).toBe(ca.issuingCertificatePem);
      expect(await readFile(ca.files.chain, 'utf8')).toBe(ca.issuingCertificatePem + ca.rootCertificatePem);
      expect((await stat(ca.files.rootKey as string)).mode & 0o777).toBe(0o600);
      expect((await stat(join(dir, 'a-issuing-key.pem'))).mode & 0o777).toBe(0o600);

      const root = new x509.X509Certificate(ca.rootCertificatePem);
      const issuing = new x509.X509Certificate(ca.issuingCertificatePem);
      expect(root.subject).toBe('C=DE, O=Example Corp, CN=Fleet Root CA');
      expect(issuing.subject).toBe('O=Example Corp, OU=Devices, CN=Fleet Issuing CA 1');
      expect(issuing.issuer).toBe(root.subject);
      expect(await root.isSelfSigned()).toBe(true);
      expect(await issuing.verify({ publicKey: root.publicKey, signatureOnly: true })).toBe(true);
      const rbc = root.getExtension(x509.BasicConstraintsExtension);
      const ibc = issuing.getExtension(x509.BasicConstraintsExtension);
      expect([rbc?.ca, rbc?.pathLength, rbc?.critical]).toEqual([true, 1, true]);
      expect([ibc?.ca, ibc?.pathLength, ibc?.critical]).toEqual([true, 0, true]);
      expect(issuing.getExtension(x509.KeyUsagesExtension)?.usages).toBe(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
      expect(issuing.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId).toBe(
        root.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId,
      );
      expect(issuing.notBefore.getTime()).toBe(clock.now() - 60_000);
      expect(issuing.notAfter.getTime()).toBe(clock.now() - 60_000 + 2 * 365 * 86_400_000);
      expect(Buffer.from(issuing.publicKey.rawData).equals(ca.backend.publicKey().export({ type: 'spki', format: 'der' }))).toBe(true);

      const v = await openssl(['verify', '-attime', attime(clock.now()), '-CAfile', ca.files.root, ca.files.issuing]);
      expect(v.code, v.stdout + v.stderr).toBe(0);

      // Never clobbers an existing CA, and a refused run generates no key.
      await expectCode(
        createCa({
          outDir,
          clock,
          trustDomain: TD,
          root: { commonName: 'R' },
          issuing: { commonName: 'I' },
          backend: { kind: 'file', keyPath: join(dir, 'a-second-key.pem') },
        }),
        'CA_CONFIG_INVALID',
      );
      await expect(access(join(dir, 'a-second-key.pem'))).rejects.toThrow();
    } finally {
      await ca.backend.close();
    }
  });

  it('can discard the root key', async () => {
    const ca = await createCa({
      outDir: join(dir, 'b'),
      clock,
      trustDomain: TD,
      root: { commonName: 'R' },
      issuing: { commonName: 'I' },
      backend: { kind: 'file', keyPath: join(dir, 'b-key.pem') },
      keepRootKey: false,
    });
    await ca.backend.close();
    expect(ca.files.rootKey).toBeUndefined();
    await expect(access(join(dir, 'b', 'root-key.pem'))).rejects.toThrow();
  });

  it('imports an existing issuing CA and refuses mismatched material', async () => {
    const mk = (name: string) =>
      createCa({
        outDir: join(dir, name),
        clock,
        trustDomain: TD,
        root: { commonName: `Root ${name}` },
        issuing: { commonName: `Issuing ${name}` },
        backend: { kind: 'file', keyPath: join(dir, `${name}-key.pem`) },
      });
    const c = await mk('c');
    const d = await mk('d');
    await c.backend.close();
    await d.backend.close();

    const imported = await importCa({
      outDir: join(dir, 'c-imported'),
      trustDomain: TD,
      rootCertificate: await readFile(c.files.root),
      issuingCertificate: c.issuingCertificatePem,
      backend: { kind: 'file', keyPath: join(dir, 'c-key.pem') },
    });
    expect(imported.chainPem).toBe(c.chainPem);
    expect(imported.backend.kind).toBe('file');
    await imported.backend.close();

    const base = { outDir: join(dir, 'x'), trustDomain: TD };
    // key of another CA
    await expectCode(
      importCa({ ...base, rootCertificate: c.rootCertificatePem, issuingCertificate: c.issuingCertificatePem, backend: { kind: 'file', keyPath: join(dir, 'd-key.pem') } }),
      'CA_CONFIG_INVALID',
    );
    // issuing CA not signed by that root
    await expectCode(
      importCa({ ...base, rootCertificate: d.rootCertificatePem, issuingCertificate: c.issuingCertificatePem, backend: { kind: 'file', keyPath: join(dir, 'c-key.pem') } }),
      'CA_CONFIG_INVALID',
    );
    // "root" that is not self-signed
    await expectCode(
      importCa({ ...base, rootCertificate: c.issuingCertificatePem, issuingCertificate: c.issuingCertificatePem, backend: { kind: 'file', keyPath: join(dir, 'c-key.pem') } }),
      'CA_CONFIG_INVALID',
    );
    await expectCode(
      importCa({ ...base, rootCertificate: 'nothing', issuingCertificate: c.issuingCertificatePem, backend: { kind: 'file', keyPath: join(dir, 'c-key.pem') } }),
      'CA_CONFIG_INVALID',
    );
    await expectCode(
      importCa({ ...base, rootCertificate: c.rootCertificatePem, issuingCertificate: c.issuingCertificatePem, backend: { kind: 'file', keyPath: join(dir, 'missing.pem') } }),
      'CA_KEY_NOT_FOUND',
    );
    await expectCode(
      importCa({ ...base, trustDomain: 'Bad Domain', rootCertificate: c.rootCertificatePem, issuingCertificate: c.issuingCertificatePem, backend: { kind: 'file', keyPath: join(dir, 'c-key.pem') } }),
      'CA_CONFIG_INVALID',
    );
  });
});
