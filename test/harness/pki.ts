import 'reflect-metadata';
import { randomBytes, webcrypto, type KeyObject } from 'node:crypto';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);

/** A throwaway ECDSA P-256 CA generated at test time (never checked in, so nothing expires in the repo). */
export interface TestCa {
  readonly certPem: string;
  readonly keyPem: string;
  issue(opts: {
    cn: string;
    dnsNames?: string[];
    ipAddresses?: string[];
    clientAuth?: boolean;
    serverAuth?: boolean;
    /** Certify an external public key (e.g. one held in a TPM) instead of generating a key pair. */
    publicKey?: KeyObject;
    days?: number;
  }): Promise<{ certPem: string; keyPem?: string }>;
}

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const pkcs8Pem = (der: ArrayBuffer) => `-----BEGIN PRIVATE KEY-----\n${Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n')}\n-----END PRIVATE KEY-----\n`;
const serial = () => {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x40;
  return b.toString('hex');
};

export async function createTestCa(name: string): Promise<TestCa> {
  const keys = (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: `CN=${name}`,
    notBefore: new Date(Date.now() - 3_600_000),
    notAfter: new Date(Date.now() + 30 * 86_400_000),
    keys,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(true, 1, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return {
    certPem: ca.toString('pem'),
    keyPem: pkcs8Pem(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)),
    async issue(opts) {
      let publicKey: webcrypto.CryptoKey;
      let keyPem: string | undefined;
      if (opts.publicKey) {
        publicKey = await webcrypto.subtle.importKey('spki', opts.publicKey.export({ type: 'spki', format: 'der' }), ALG, true, ['verify']);
      } else {
        const pair = (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
        publicKey = pair.publicKey;
        keyPem = pkcs8Pem(await webcrypto.subtle.exportKey('pkcs8', pair.privateKey));
      }
      const eku = [...(opts.clientAuth ? [x509.ExtendedKeyUsage.clientAuth] : []), ...(opts.serverAuth ? [x509.ExtendedKeyUsage.serverAuth] : [])];
      const san = [
        ...(opts.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
        ...(opts.ipAddresses ?? []).map((value) => ({ type: 'ip' as const, value })),
      ];
      const cert = await x509.X509CertificateGenerator.create({
        serialNumber: serial(),
        subject: `CN=${opts.cn}`,
        issuer: ca.subject,
        notBefore: new Date(Date.now() - 3_600_000),
        notAfter: new Date(Date.now() + (opts.days ?? 7) * 86_400_000),
        publicKey,
        signingKey: keys.privateKey,
        signingAlgorithm: ALG,
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
          ...(eku.length ? [new x509.ExtendedKeyUsageExtension(eku)] : []),
          ...(san.length ? [new x509.SubjectAlternativeNameExtension(san)] : []),
          await x509.AuthorityKeyIdentifierExtension.create(ca),
        ],
      });
      return { certPem: cert.toString('pem'), ...(keyPem ? { keyPem } : {}) };
    },
  };
}
