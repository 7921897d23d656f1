import 'reflect-metadata';
import { generateKeyPairSync, randomBytes, webcrypto, createPrivateKey, type KeyObject } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import type { Clock } from '../../../common/clock.js';
import { TAG, bytesOf, expectTlv, readSingle, toPem } from '../../../common/der.js';
import type { CaBackend } from '../ca/ca-backend.js';
import { assembleSigned } from '../ca/device-profile.js';

x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);

/**
 * Who signs a service certificate:
 * - `{ issuingCertPem, backend }`: the fleet's issuing CA through its CaBackend (key file or PKCS#11).
 *   The fleet does this: the broker's `crlfile` then needs only the issuing CA's CRL for every client
 *   certificate it sees (with a CRL file set, OpenSSL refuses a client certificate whose issuer has
 *   no CRL in it; ../shared/FACTS.md). The returned server certificate PEM carries the issuing CA
 *   after the leaf, so clients that trust only the root can build the path.
 * - `{ rootCertPem, rootKeyPem }`: a root key in PEM, for stand-alone test brokers without a fleet CA.
 */
export type ServiceCertSigner =
  | { readonly issuingCertPem: string; readonly backend: CaBackend }
  | { readonly rootCertPem: string; readonly rootKeyPem: string };

/**
 * Certificates for the fleet's own services: the broker's TLS server certificate (devices trust it
 * through the trust bundle they get at enrollment) and client certificates for roles on the device
 * listener (`role:bridge`, `role:station:<id>`, …; a ':' no device id can contain). Issued rarely
 * (set-up, renewal): the convenient @peculiar/x509 path is fine. The key is generated here and
 * returned as PEM for the service's own 0600 key file.
 */
export async function issueServiceCertificate(
  opts: ServiceCertSigner & {
    commonName: string;
    usage: 'server' | 'client';
    /** SAN entries (IP addresses or DNS names); required for servers. */
    hosts?: readonly string[];
    clock: Clock;
    lifetimeSec?: number;
  },
): Promise<{ certPem: string; keyPem: string; serialNumber: string }> {
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
  const viaBackend = 'backend' in opts;
  const caCert = new x509.X509Certificate(viaBackend ? opts.issuingCertPem : opts.rootCertPem);
  // With a backend the generator signs with a throwaway key and the backend re-signs the TBS below.
  const signingKey = viaBackend
    ? (await webcrypto.subtle.generateKey(alg, false, ['sign', 'verify'])).privateKey
    : await webcrypto.subtle.importKey('pkcs8', createPrivateKey(opts.rootKeyPem).export({ type: 'pkcs8', format: 'der' }), alg, false, ['sign']);
  const pair = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const publicKey = await webcrypto.subtle.importKey('spki', pair.publicKey.export({ type: 'spki', format: 'der' }), alg, true, ['verify']);
  const now = opts.clock.now();
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x40;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial.toString('hex'),
    subject: `CN=${opts.commonName}`,
    issuer: caCert.subject,
    notBefore: new Date(now - 300_000),
    notAfter: new Date(now + (opts.lifetimeSec ?? 365 * 86_400) * 1000),
    publicKey,
    signingKey,
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
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
    ],
  });
  let certPem = cert.toString('pem');
  if (viaBackend) {
    const der = Buffer.from(cert.rawData);
    const outer = readSingle(der, TAG.SEQUENCE, 'certificate');
    const tbs = bytesOf(der, expectTlv(der, outer.contentStart, outer.end, TAG.SEQUENCE, 'tbsCertificate'));
    const { signature } = await opts.backend.sign({ tbs });
    certPem = toPem(assembleSigned(tbs, signature), 'CERTIFICATE');
    if (opts.usage === 'server') certPem += opts.issuingCertPem.endsWith('\n') ? opts.issuingCertPem : `${opts.issuingCertPem}\n`;
  }
  return {
    certPem,
    keyPem: (pair.privateKey as KeyObject).export({ type: 'pkcs8', format: 'pem' }).toString(),
    serialNumber: serial.toString('hex'),
  };
}
