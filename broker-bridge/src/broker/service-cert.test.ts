import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { execFile } from 'node:child_process';
import { createPrivateKey, createPublicKey, webcrypto } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../../common/clock.js';
import { pemBlocks } from '../../../common/der.js';
import { createCa, type CaMaterial } from '../ca/ca-setup.js';
import { FileKeyCa } from '../ca/file-key-ca.js';
import { assertOutputsWritable, issueServiceCertificate, roleCommonName, writeServiceCertificateFiles } from './service-cert.js';

x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);
const run = promisify(execFile);

async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<string | undefined> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
}

describe('service certificates from the issuing CA', () => {
  let dir: string;
  let ca: CaMaterial;
  const clock = new ManualClock(Date.now());

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'service-cert-'));
    ca = await createCa({
      outDir: join(dir, 'ca'),
      clock,
      trustDomain: 'svc.test',
      root: { commonName: 'svc root' },
      issuing: { commonName: 'svc issuing' },
      backend: { kind: 'file', keyPath: join(dir, 'ca', 'issuing-key.pem') },
      issuingLifetimeSec: 400 * 86_400,
    });
  });
  afterAll(async () => {
    await ca.backend.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const signer = () => ({ issuingCertPem: ca.issuingCertificatePem, backend: ca.backend });

  it('issues a server certificate with typed SANs, chained to the issuing CA, that openssl verifies as a TLS server', async () => {
    const c = await issueServiceCertificate({ ...signer(), commonName: 'broker.svc.test', usage: 'server', dns: ['broker.svc.test', 'Localhost'], ips: ['127.0.0.1', '::1'], clock, lifetimeSec: 90 * 86_400 });
    expect(c.certPem).toBe(c.leafPem + ca.issuingCertificatePem);
    const leaf = new x509.X509Certificate(c.leafPem);
    expect(leaf.serialNumber).toBe(c.serialNumber);
    expect(leaf.issuer).toBe(new x509.X509Certificate(ca.issuingCertificatePem).subject);
    expect(leaf.getExtension(x509.SubjectAlternativeNameExtension)?.names.toJSON()).toEqual([
      { type: 'dns', value: 'broker.svc.test' },
      { type: 'dns', value: 'localhost' },
      { type: 'ip', value: '127.0.0.1' },
      { type: 'ip', value: '::1' },
    ]);
    expect(c.notAfter.getTime() - c.notBefore.getTime()).toBe(90 * 86_400_000 + 300_000);
    // The key is the certificate's.
    expect(createPublicKey(createPrivateKey(c.keyPem)).export({ type: 'spki', format: 'der' }).equals(Buffer.from(leaf.publicKey.rawData))).toBe(true);
    writeFileSync(join(dir, 'root.pem'), ca.rootCertificatePem);
    writeFileSync(join(dir, 'issuing.pem'), ca.issuingCertificatePem);
    writeFileSync(join(dir, 'server.pem'), c.leafPem);
    const v = await run('openssl', ['verify', '-purpose', 'sslserver', '-CAfile', join(dir, 'root.pem'), '-untrusted', join(dir, 'issuing.pem'), join(dir, 'server.pem')]);
    expect(v.stdout.trim()).toBe(`${join(dir, 'server.pem')}: OK`);
  });

  it('issues role client certificates whose subject is exactly one CN, whatever characters it holds', async () => {
    const c = await issueServiceCertificate({ ...signer(), commonName: roleCommonName('station:line-1'), usage: 'client', clock });
    expect(c.certPem).toBe(c.leafPem); // a client's chain is the caller's choice
    const leaf = new x509.X509Certificate(c.leafPem);
    expect(leaf.subject).toBe('CN=role:station:line-1');
    expect(leaf.getExtension(x509.ExtendedKeyUsageExtension)?.usages).toEqual([x509.ExtendedKeyUsage.clientAuth]);
    const odd = new x509.X509Certificate((await issueServiceCertificate({ ...signer(), commonName: 'a,O=evil+OU=x', usage: 'client', clock })).leafPem);
    expect(odd.subjectName.getField('CN')).toEqual(['a,O=evil+OU=x']);
    expect(odd.subjectName.getField('O')).toEqual([]);
  });

  it('refuses bad names, a server without SANs, a lifetime that outlives the CA and a backend that is not the issuing CA\'s key', async () => {
    const base = { ...signer(), usage: 'client' as const, clock };
    expect(await codeOf(issueServiceCertificate({ ...base, commonName: '' }))).toBe('SERVICE_CERT_BAD_REQUEST');
    expect(await codeOf(issueServiceCertificate({ ...base, commonName: 'x'.repeat(65) }))).toBe('SERVICE_CERT_BAD_REQUEST');
    expect(await codeOf(issueServiceCertificate({ ...base, commonName: 'a\nb' }))).toBe('SERVICE_CERT_BAD_REQUEST');
    expect(await codeOf(issueServiceCertificate({ ...base, commonName: 's', usage: 'server' }))).toBe('SERVICE_CERT_BAD_REQUEST');
    expect(await codeOf(issueServiceCertificate({ ...base, commonName: 's', usage: 'server', dns: ['under_score.example'] }))).toBe('SERVICE_CERT_BAD_REQUEST');
    expect(await codeOf(issueServiceCertificate({ ...base, commonName: 's', usage: 'server', dns: ['-lead.example'] }))).toBe('SERVICE_CERT_BAD_REQUEST');
    expect(await codeOf(issueServiceCertificate({ ...base, commonName: 's', usage: 'server', ips: ['256.0.0.1'] }))).toBe('SERVICE_CERT_BAD_REQUEST');
    expect(await codeOf(issueServiceCertificate({ ...base, commonName: 's', usage: 'server', ips: ['localhost'] }))).toBe('SERVICE_CERT_BAD_REQUEST');
    expect(await codeOf(issueServiceCertificate({ ...base, commonName: 's', lifetimeSec: 10 }))).toBe('SERVICE_CERT_BAD_REQUEST');
    // The issuing CA lives 400 days: 401 are refused; the default (365) fits; a CA near its end cuts the default.
    expect(await codeOf(issueServiceCertificate({ ...base, commonName: 's', lifetimeSec: 401 * 86_400 }))).toBe('CA_POLICY_DENIED');
    const late = new ManualClock(clock.now() + 380 * 86_400_000);
    const cut = await issueServiceCertificate({ ...base, commonName: 's', clock: late });
    expect(cut.notAfter.getTime()).toBe(new x509.X509Certificate(ca.issuingCertificatePem).notAfter.getTime());
    const other = await FileKeyCa.create({ keyPath: join(dir, 'other-key.pem') });
    try {
      expect(await codeOf(issueServiceCertificate({ issuingCertPem: ca.issuingCertificatePem, backend: other, commonName: 's', usage: 'client', clock }))).toBe('CA_CONFIG_INVALID');
    } finally {
      await other.close();
    }
  });

  it('spells role CNs as the broker ACL names them, and nothing else', async () => {
    expect(roleCommonName('bridge')).toBe('role:bridge');
    expect(roleCommonName('operator:alice')).toBe('role:operator:alice');
    expect(roleCommonName('auditor:watch')).toBe('role:auditor:watch');
    for (const bad of ['', 'bridge:x', 'station', 'station:', 'operator:a/b', 'operator:a:b', 'admin:x', 'role:bridge', 'device:gw-1', `station:${'x'.repeat(65)}`, 'constructor:x', '__proto__']) {
      expect(await codeOf(() => roleCommonName(bad)), bad).toBe('SERVICE_CERT_BAD_REQUEST');
    }
  });

  it('writes the key 0600 and never over an existing file unless forced, then atomically', async () => {
    const out = join(dir, 'out', 'svc');
    expect(await codeOf(assertOutputsWritable(out))).toBe('SERVICE_CERT_BAD_REQUEST'); // no such directory
    const prefix = join(dir, 'svc');
    await assertOutputsWritable(prefix);
    const c1 = await issueServiceCertificate({ ...signer(), commonName: 'role:bridge', usage: 'client', clock });
    await writeServiceCertificateFiles(prefix, c1);
    expect(statSync(`${prefix}.key`).mode & 0o777).toBe(0o600);
    expect(statSync(`${prefix}.crt`).mode & 0o777).toBe(0o644);
    expect(await codeOf(assertOutputsWritable(prefix))).toBe('SERVICE_CERT_OUTPUT_EXISTS');
    const c2 = await issueServiceCertificate({ ...signer(), commonName: 'role:bridge', usage: 'client', clock });
    expect(await codeOf(writeServiceCertificateFiles(prefix, c2))).toBe('SERVICE_CERT_OUTPUT_EXISTS');
    expect(readFileSync(`${prefix}.key`, 'utf8')).toBe(c1.keyPem);
    expect(readFileSync(`${prefix}.crt`, 'utf8')).toBe(c1.certPem);
    // Only the certificate left over from elsewhere: the key is refused too (no key without its certificate).
    rmSync(`${prefix}.key`);
    expect(await codeOf(writeServiceCertificateFiles(prefix, c2))).toBe('SERVICE_CERT_OUTPUT_EXISTS');
    expect(() => statSync(`${prefix}.key`)).toThrow();
    await assertOutputsWritable(prefix, { force: true });
    await writeServiceCertificateFiles(prefix, c2, { force: true });
    expect(readFileSync(`${prefix}.key`, 'utf8')).toBe(c2.keyPem);
    expect(pemBlocks(readFileSync(`${prefix}.crt`, 'utf8'), 'CERTIFICATE')).toHaveLength(1);
    expect(statSync(`${prefix}.key`).mode & 0o777).toBe(0o600);
  });
});
