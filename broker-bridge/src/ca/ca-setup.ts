import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { generateKeyPairSync, randomBytes, webcrypto } from 'node:crypto';
import { access, mkdir, open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Clock } from '../../../common/clock.js';
import { samePublicKey, type CaBackend } from './ca-backend.js';
import { keyIdentifier, parseIssuingCa } from './ca-cert.js';
import { pemBlocks, toPem } from '../../../common/der.js';
import { TRUST_DOMAIN_PATTERN } from './device-profile.js';
import { CaError } from './errors.js';
import { FileKeyCa } from './file-key-ca.js';
import { Pkcs11Ca, type Pkcs11CaOpenRequest } from './pkcs11-ca.js';

/**
 * One-time CA set-up (slow path, @peculiar/x509): a self-signed root (pathLen 1) and an issuing CA
 * (pathLen 0) whose key lives in the chosen backend; or adoption of an existing issuing CA.
 */

x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);

export interface CaSubject {
  readonly commonName: string;
  readonly organization?: string;
  readonly organizationalUnit?: string;
  readonly country?: string;
}

export type BackendSpec =
  | { readonly kind: 'file'; readonly keyPath: string }
  | ({ readonly kind: 'pkcs11' } & Omit<Pkcs11CaOpenRequest, 'keyMode'>);

export interface CreateCaRequest {
  readonly outDir: string;
  readonly clock: Clock;
  readonly trustDomain: string;
  readonly root: CaSubject;
  readonly issuing: CaSubject;
  /** Where the new issuing key is generated (file: must not exist; pkcs11: label must be free). */
  readonly backend: BackendSpec;
  readonly rootLifetimeSec?: number;
  readonly issuingLifetimeSec?: number;
  /** Clock-skew allowance applied to both CA certificates' notBefore. */
  readonly backdateSec?: number;
  /**
   * Write the root private key to `<outDir>/root-key.pem` (0600). With false it is discarded after
   * signing the issuing CA: nothing else can ever be certified by that root.
   */
  readonly keepRootKey?: boolean;
}

export interface ImportCaRequest {
  readonly outDir: string;
  readonly trustDomain: string;
  readonly rootCertificate: Buffer | string;
  readonly issuingCertificate: Buffer | string;
  /** The existing issuing key: a key file, or a key label in the token. */
  readonly backend: BackendSpec;
}

export interface CaFiles {
  readonly root: string;
  readonly issuing: string;
  /** issuing + root, leaf-first order. */
  readonly chain: string;
  readonly rootKey?: string;
}

export interface CaMaterial {
  readonly backend: CaBackend;
  readonly trustDomain: string;
  readonly rootCertificatePem: string;
  readonly issuingCertificatePem: string;
  readonly chainPem: string;
  readonly files: CaFiles;
}

const DEFAULT_ROOT_LIFETIME_SEC = 10 * 365 * 86_400;
const DEFAULT_ISSUING_LIFETIME_SEC = 5 * 365 * 86_400;
const DEFAULT_BACKDATE_SEC = 300;

/** Opens (or, with keyMode 'generate', creates) the signing backend described by `spec`. */
export async function openBackend(spec: BackendSpec, keyMode: 'find' | 'generate' = 'find'): Promise<CaBackend> {
  if (spec.kind === 'file') {
    return keyMode === 'generate' ? FileKeyCa.create({ keyPath: spec.keyPath }) : FileKeyCa.open({ keyPath: spec.keyPath });
  }
  const { kind: _kind, ...req } = spec;
  return Pkcs11Ca.open({ ...req, keyMode });
}

export async function createCa(req: CreateCaRequest): Promise<CaMaterial> {
  checkTrustDomain(req.trustDomain);
  const rootLifetime = req.rootLifetimeSec ?? DEFAULT_ROOT_LIFETIME_SEC;
  const issuingLifetime = req.issuingLifetimeSec ?? DEFAULT_ISSUING_LIFETIME_SEC;
  const backdate = req.backdateSec ?? DEFAULT_BACKDATE_SEC;
  if (!(issuingLifetime > 0 && rootLifetime >= issuingLifetime)) {
    throw new CaError('CA_CONFIG_INVALID', 'need 0 < issuingLifetimeSec <= rootLifetimeSec');
  }
  await mkdir(req.outDir, { recursive: true });
  // Checked before the key is generated, so a refused run leaves no orphan key behind.
  for (const f of ['root.pem', 'issuing.pem', 'chain.pem', 'root-key.pem']) {
    if (await exists(join(req.outDir, f))) throw new CaError('CA_CONFIG_INVALID', `${join(req.outDir, f)} already exists`);
  }

  const backend = await openBackend(req.backend, 'generate');
  try {
    const notBefore = new Date(Math.floor(req.clock.now() / 1000) * 1000 - backdate * 1000);
    const root = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const rootPkcs8 = root.privateKey.export({ type: 'pkcs8', format: 'der' });
    const rootSpki = root.publicKey.export({ type: 'spki', format: 'der' });
    const rootSigningKey = await webcrypto.subtle.importKey('pkcs8', rootPkcs8, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']);
    const rootSki = keyIdentifier(rootSpki).toString('hex');
    const alg = { name: 'ECDSA', hash: 'SHA-256' };
    const trustDomainId = new x509.SubjectAlternativeNameExtension([{ type: 'url', value: `spiffe://${req.trustDomain}` }]);

    const rootCert = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerialHex(),
      subject: jsonName(req.root),
      issuer: jsonName(req.root),
      notBefore,
      notAfter: new Date(notBefore.getTime() + rootLifetime * 1000),
      signingAlgorithm: alg,
      publicKey: rootSpki,
      signingKey: rootSigningKey,
      extensions: [
        new x509.BasicConstraintsExtension(true, 1, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        new x509.SubjectKeyIdentifierExtension(rootSki),
        trustDomainId,
      ],
    });

    const issuingSpki = backend.publicKey().export({ type: 'spki', format: 'der' });
    const issuingCert = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerialHex(),
      subject: jsonName(req.issuing),
      issuer: rootCert.subject,
      notBefore,
      notAfter: new Date(notBefore.getTime() + issuingLifetime * 1000),
      signingAlgorithm: alg,
      publicKey: issuingSpki,
      signingKey: rootSigningKey,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        new x509.SubjectKeyIdentifierExtension(keyIdentifier(issuingSpki).toString('hex')),
        new x509.AuthorityKeyIdentifierExtension(rootSki),
        trustDomainId,
      ],
    });

    const rootPem = toPem(Buffer.from(rootCert.rawData), 'CERTIFICATE');
    const issuingPem = toPem(Buffer.from(issuingCert.rawData), 'CERTIFICATE');
    const files = await writeCaFiles(req.outDir, rootPem, issuingPem, 'wx');
    let rootKey: string | undefined;
    if (req.keepRootKey ?? true) {
      rootKey = join(req.outDir, 'root-key.pem');
      await writeSecret(rootKey, root.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString());
    }
    return {
      backend,
      trustDomain: req.trustDomain,
      rootCertificatePem: rootPem,
      issuingCertificatePem: issuingPem,
      chainPem: issuingPem + rootPem,
      files: rootKey ? { ...files, rootKey } : files,
    };
  } catch (e) {
    await backend.close();
    if (e instanceof CaError) throw e;
    throw new CaError('CA_CONFIG_INVALID', `CA creation failed: ${(e as Error).message}`, { cause: e });
  }
}

export async function importCa(req: ImportCaRequest): Promise<CaMaterial> {
  checkTrustDomain(req.trustDomain);
  const rootDer = firstCertificate(req.rootCertificate, 'root');
  const issuingDer = firstCertificate(req.issuingCertificate, 'issuing');
  let root: x509.X509Certificate, issuing: x509.X509Certificate;
  try {
    root = new x509.X509Certificate(rootDer);
    issuing = new x509.X509Certificate(issuingDer);
  } catch (e) {
    throw new CaError('CA_CONFIG_INVALID', 'unreadable CA certificate', { cause: e });
  }
  const rootOk = (await root.isSelfSigned()) && root.getExtension(x509.BasicConstraintsExtension)?.ca === true;
  if (!rootOk) throw new CaError('CA_CONFIG_INVALID', 'root certificate is not a self-signed CA');
  if (!(await issuing.verify({ publicKey: root.publicKey, signatureOnly: true }))) {
    throw new CaError('CA_CONFIG_INVALID', 'issuing certificate is not signed by the root');
  }
  parseIssuingCa(issuingDer); // CA flag, keyCertSign

  await mkdir(req.outDir, { recursive: true });
  const backend = await openBackend(req.backend, 'find');
  try {
    if (!samePublicKey(parseIssuingCa(issuingDer).publicKey, backend.publicKey())) {
      throw new CaError('CA_CONFIG_INVALID', 'issuing certificate does not match the backend key');
    }
    const rootPem = toPem(rootDer, 'CERTIFICATE');
    const issuingPem = toPem(issuingDer, 'CERTIFICATE');
    const files = await writeCaFiles(req.outDir, rootPem, issuingPem, 'w');
    return {
      backend,
      trustDomain: req.trustDomain,
      rootCertificatePem: rootPem,
      issuingCertificatePem: issuingPem,
      chainPem: issuingPem + rootPem,
      files,
    };
  } catch (e) {
    await backend.close();
    throw e;
  }
}

async function writeCaFiles(dir: string, rootPem: string, issuingPem: string, flag: 'w' | 'wx'): Promise<CaFiles> {
  const files = { root: join(dir, 'root.pem'), issuing: join(dir, 'issuing.pem'), chain: join(dir, 'chain.pem') };
  try {
    await writeFile(files.root, rootPem, { flag, mode: 0o644 });
    await writeFile(files.issuing, issuingPem, { flag, mode: 0o644 });
    await writeFile(files.chain, issuingPem + rootPem, { flag, mode: 0o644 });
  } catch (e) {
    throw new CaError('CA_CONFIG_INVALID', `cannot write CA files in ${dir}`, { cause: e });
  }
  return files;
}

async function writeSecret(path: string, data: string): Promise<void> {
  const fh = await open(path, 'wx', 0o600);
  try {
    await fh.chmod(0o600);
    await fh.writeFile(data);
  } finally {
    await fh.close();
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

function checkTrustDomain(td: string): void {
  if (!TRUST_DOMAIN_PATTERN.test(td)) throw new CaError('CA_CONFIG_INVALID', `invalid trust domain ${JSON.stringify(td)}`);
}

function firstCertificate(input: Buffer | string, what: string): Buffer {
  if (Buffer.isBuffer(input) && input[0] === 0x30) return input;
  const [der] = pemBlocks(input.toString(), 'CERTIFICATE');
  if (!der) throw new CaError('CA_CONFIG_INVALID', `no ${what} certificate found`);
  return der;
}

function jsonName(s: CaSubject): x509.JsonName {
  const name: x509.JsonName = [];
  if (s.country) name.push({ C: [s.country] });
  if (s.organization) name.push({ O: [s.organization] });
  if (s.organizationalUnit) name.push({ OU: [s.organizationalUnit] });
  name.push({ CN: [s.commonName] });
  return name;
}

function randomSerialHex(): string {
  const b = randomBytes(16);
  b[0] = ((b[0] as number) & 0x7f) | 0x40; // positive, no leading zero byte
  return b.toString('hex');
}
