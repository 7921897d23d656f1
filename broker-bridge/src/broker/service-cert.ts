import 'reflect-metadata';
import { generateKeyPairSync, randomBytes, webcrypto, createPrivateKey, type KeyObject } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import type { Clock } from '../../../common/clock.js';

x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);

/**
 * Certificates for the fleet's own services, issued by the fleet root: the broker's TLS server
 * certificate (devices trust it through the trust bundle they get at enrollment) and client
 * certificates for roles on the device listener (`role:bridge`, `role:station:<id>`, …; a ':' no
 * device id can contain). Issued rarely (set-up, renewal): the convenient @peculiar/x509 path is fine.
 * The key is generated here and returned as PEM for the service's own 0600 key file.
 */
export async function issueServiceCertificate(opts: {
  rootCertPem: string;
  rootKeyPem: string;
  commonName: string;
  usage: 'server' | 'client';
  /** SAN entries (IP addresses or DNS names); required for servers. */
  hosts?: readonly string[];
  clock: Clock;
  lifetimeSec?: number;
}): Promise<{ certPem: string; keyPem: string }> {
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
  const rootCert = new x509.X509Certificate(opts.rootCertPem);
  const rootKey = await webcrypto.subtle.importKey(
    'pkcs8',
    createPrivateKey(opts.rootKeyPem).export({ type: 'pkcs8', format: 'der' }),
    alg,
    false,
    ['sign'],
  );
  const pair = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const publicKey = await webcrypto.subtle.importKey('spki', pair.publicKey.export({ type: 'spki', format: 'der' }), alg, true, ['verify']);
  const now = opts.clock.now();
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x40;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial.toString('hex'),
    subject: `CN=${opts.commonName}`,
    issuer: rootCert.subject,
    notBefore: new Date(now - 300_000),
    notAfter: new Date(now + (opts.lifetimeSec ?? 365 * 86_400) * 1000),
    publicKey,
    signingKey: rootKey,
    signingAlgorithm: alg,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([opts.usage === 'server' ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth]),
      ...((opts.hosts ?? []).length
        ? [
            new x509.SubjectAlternativeNameExtension(
              (opts.hosts ?? []).map((h) => (/^[\d.]+$|:/.test(h) ? { type: 'ip' as const, value: h } : { type: 'dns' as const, value: h })),
            ),
          ]
        : []),
      await x509.AuthorityKeyIdentifierExtension.create(rootCert),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: (pair.privateKey as KeyObject).export({ type: 'pkcs8', format: 'pem' }).toString() };
}
