import 'reflect-metadata';
import { generateKeyPairSync, randomBytes, webcrypto, createPrivateKey, type KeyObject } from 'node:crypto';
import { access, open, rm, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { isIP } from 'node:net';
import * as x509 from '@peculiar/x509';
import type { Clock } from '../../../common/clock.js';
import { CodedError } from '../../../common/coded-error.js';
import { TAG, bytesOf, expectTlv, readSingle, toPem } from '../../../common/der.js';
import { samePublicKey, type CaBackend } from '../ca/ca-backend.js';
import { parseIssuingCa } from '../ca/ca-cert.js';
import { assembleSigned } from '../ca/device-profile.js';
import { CaError } from '../ca/errors.js';
import { writeFileAtomic } from '../../../common/atomic-file.js';

x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);

export type ServiceCertErrorCode =
  /** A name, role, SAN or lifetime that cannot go into a service certificate. */
  | 'SERVICE_CERT_BAD_REQUEST'
  /** The certificate or key file exists and overwriting was not asked for. */
  | 'SERVICE_CERT_OUTPUT_EXISTS'
  /** The output files could not be written. */
  | 'SERVICE_CERT_WRITE_FAILED';

export class ServiceCertError extends CodedError<ServiceCertErrorCode> {}

/**
 * Who signs a service certificate:
 * - `{ issuingCertPem, backend }`: the fleet's issuing CA through its CaBackend (key file or PKCS#11).
 *   The fleet does this: the broker's `crlfile` then needs only the issuing CA's CRL for every client
 *   certificate it sees (with a CRL file set, OpenSSL refuses a client certificate whose issuer has
 *   no CRL in it; ../shared/FACTS.md). The backend's key must be the issuing certificate's
 *   (CA_CONFIG_INVALID otherwise).
 * - `{ rootCertPem, rootKeyPem }`: a root key in PEM, for stand-alone test brokers without a fleet CA.
 */
export type ServiceCertSigner =
  | { readonly issuingCertPem: string; readonly backend: CaBackend }
  | { readonly rootCertPem: string; readonly rootKeyPem: string };

export interface ServiceCertificate {
  /** Via a backend, for a server: leaf + issuing CA (clients that trust only the root can build the path). Otherwise the leaf. */
  readonly certPem: string;
  /** The leaf alone. */
  readonly leafPem: string;
  /** PKCS#8 PEM of the new key; the caller writes it 0600 and never logs it. */
  readonly keyPem: string;
  /** Lower-case hex. */
  readonly serialNumber: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** The SANs as issued (deduplicated, DNS names lower-cased): `dns:<name>`, `ip:<address>`. */
  readonly subjectAltNames: readonly string[];
}

/** Service certificates are backdated this much for clock skew. */
const BACKDATE_MS = 300_000;
const DEFAULT_LIFETIME_SEC = 365 * 86_400;
/** RFC 5280 ub-common-name. */
const CN = /^[\x20-\x7e]{1,64}$/;
const DNS_LABEL = '[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?';
const DNS_NAME = new RegExp(`^(?=.{1,253}$)${DNS_LABEL}(?:\\.${DNS_LABEL})*$`);

/**
 * Certificates for the fleet's own services: the broker's TLS server certificate (devices trust it
 * through the trust bundle they get at enrollment) and client certificates for roles on the device
 * listener (`role:bridge`, `role:station:<id>`, …; a ':' no device id can contain). Issued rarely
 * (set-up, renewal): the convenient @peculiar/x509 path is fine. The key is generated here and
 * returned as PEM for the service's own 0600 key file.
 *
 * SANs: `dns` and `ips` are typed; `hosts` (either kind, told apart by their form) is the short way for
 * loopback brokers. A server needs at least one. Refusals: SERVICE_CERT_BAD_REQUEST (names, lifetime),
 * CA_POLICY_DENIED (the certificate would outlive its CA), CA_CONFIG_INVALID (backend key ≠ issuing CA).
 */
export async function issueServiceCertificate(
  opts: ServiceCertSigner & {
    commonName: string;
    usage: 'server' | 'client';
    /** SAN entries (IP addresses or DNS names). */
    hosts?: readonly string[];
    dns?: readonly string[];
    ips?: readonly string[];
    clock: Clock;
    /** Default 365 days, cut to the CA's notAfter; a lifetime given here that outlives the CA is refused. */
    lifetimeSec?: number;
  },
): Promise<ServiceCertificate> {
  if (!CN.test(opts.commonName)) throw new ServiceCertError('SERVICE_CERT_BAD_REQUEST', `common name ${JSON.stringify(opts.commonName)} must be 1–64 printable ASCII characters`);
  const sans = subjectAltNames(opts);
  if (opts.usage === 'server' && sans.length === 0) throw new ServiceCertError('SERVICE_CERT_BAD_REQUEST', 'a server certificate needs at least one DNS name or IP address');
  const lifetimeSec = opts.lifetimeSec ?? DEFAULT_LIFETIME_SEC;
  if (!Number.isSafeInteger(lifetimeSec) || lifetimeSec < 60) throw new ServiceCertError('SERVICE_CERT_BAD_REQUEST', 'lifetime must be a whole number of seconds, at least 60');

  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
  const viaBackend = 'backend' in opts;
  const caPem = viaBackend ? opts.issuingCertPem : opts.rootCertPem;
  const ca = parseIssuingCa(caPem);
  if (viaBackend && !samePublicKey(ca.publicKey, opts.backend.publicKey())) {
    throw new CaError('CA_CONFIG_INVALID', 'the CA backend key is not the issuing certificate\'s key');
  }
  const now = opts.clock.now();
  const notBefore = new Date(Math.floor((now - BACKDATE_MS) / 1000) * 1000);
  let notAfter = new Date(Math.floor((now + lifetimeSec * 1000) / 1000) * 1000);
  // The default lifetime ends with the CA at the latest; a lifetime asked for is refused instead.
  if (opts.lifetimeSec === undefined && notAfter.getTime() > ca.notAfter) notAfter = new Date(ca.notAfter);
  if (notAfter.getTime() > ca.notAfter) {
    throw new CaError('CA_POLICY_DENIED', `the certificate would outlive its CA (CA notAfter ${new Date(ca.notAfter).toISOString()}); ask for a shorter lifetime`);
  }
  const caCert = new x509.X509Certificate(caPem);
  // With a backend the generator signs with a throwaway key and the backend re-signs the TBS below.
  const signingKey = viaBackend
    ? (await webcrypto.subtle.generateKey(alg, false, ['sign', 'verify'])).privateKey
    : await webcrypto.subtle.importKey('pkcs8', createPrivateKey(opts.rootKeyPem).export({ type: 'pkcs8', format: 'der' }), alg, false, ['sign']);
  const pair = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const publicKey = await webcrypto.subtle.importKey('spki', pair.publicKey.export({ type: 'spki', format: 'der' }), alg, true, ['verify']);
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x40;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial.toString('hex'),
    // A JSON name, never a string: a CN with ',' or '=' must not become extra RDNs.
    subject: [{ CN: [opts.commonName] }],
    issuer: caCert.subjectName,
    notBefore,
    notAfter,
    publicKey,
    signingKey,
    signingAlgorithm: alg,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([opts.usage === 'server' ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth]),
      ...(sans.length ? [new x509.SubjectAlternativeNameExtension(sans)] : []),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
    ],
  });
  let leafPem = cert.toString('pem');
  let certPem = leafPem;
  if (viaBackend) {
    const der = Buffer.from(cert.rawData);
    const outer = readSingle(der, TAG.SEQUENCE, 'certificate');
    const tbs = bytesOf(der, expectTlv(der, outer.contentStart, outer.end, TAG.SEQUENCE, 'tbsCertificate'));
    const { signature } = await opts.backend.sign({ tbs });
    leafPem = toPem(assembleSigned(tbs, signature), 'CERTIFICATE');
    certPem = opts.usage === 'server' ? leafPem + withNewline(opts.issuingCertPem) : leafPem;
  }
  return {
    certPem,
    leafPem,
    keyPem: (pair.privateKey as KeyObject).export({ type: 'pkcs8', format: 'pem' }).toString(),
    serialNumber: serial.toString('hex'),
    notBefore,
    notAfter,
    subjectAltNames: sans.map((n) => `${n.type}:${n.value}`),
  };
}

function subjectAltNames(o: { hosts?: readonly string[]; dns?: readonly string[]; ips?: readonly string[] }): { type: 'dns' | 'ip'; value: string }[] {
  const dns = (name: string) => {
    if (!DNS_NAME.test(name)) throw new ServiceCertError('SERVICE_CERT_BAD_REQUEST', `${JSON.stringify(name)} is not a DNS name`);
    return { type: 'dns' as const, value: name.toLowerCase() };
  };
  const ip = (addr: string) => {
    if (isIP(addr) === 0) throw new ServiceCertError('SERVICE_CERT_BAD_REQUEST', `${JSON.stringify(addr)} is not an IP address`);
    return { type: 'ip' as const, value: addr };
  };
  const all = [...(o.hosts ?? []).map((h) => (isIP(h) ? ip(h) : dns(h))), ...(o.dns ?? []).map(dns), ...(o.ips ?? []).map(ip)];
  if (all.length > 64) throw new ServiceCertError('SERVICE_CERT_BAD_REQUEST', 'at most 64 subject alternative names');
  const seen = new Set<string>();
  return all.filter((s) => !seen.has(`${s.type}:${s.value}`) && seen.add(`${s.type}:${s.value}`));
}

const withNewline = (pem: string) => (pem.endsWith('\n') ? pem : `${pem}\n`);

/** Role kinds on the device listener and whether they take an id (`role:<kind>[:<id>]`). */
export const SERVICE_ROLES = { bridge: false, station: true, operator: true, auditor: true } as const;
const ROLE_ID = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * The CN for a role as `bridge cert issue --role` spells it: `bridge`, `station:<id>`, `operator:<id>`
 * or `auditor:<id>` (ids: letters, digits, `.`, `_`, `-`, at most 64) → `role:…`, the identity the
 * generated broker ACLs name. SERVICE_CERT_BAD_REQUEST for anything else.
 */
export function roleCommonName(role: string): string {
  const [kind, id, ...rest] = role.split(':');
  const needsId = Object.hasOwn(SERVICE_ROLES, kind ?? '') ? SERVICE_ROLES[kind as keyof typeof SERVICE_ROLES] : undefined;
  const ok = needsId !== undefined && rest.length === 0 && (needsId ? id !== undefined && ROLE_ID.test(id) : id === undefined);
  if (!ok) {
    throw new ServiceCertError('SERVICE_CERT_BAD_REQUEST', `role ${JSON.stringify(role)} must be bridge, station:<id>, operator:<id> or auditor:<id> (id: [A-Za-z0-9._-], 1–64)`);
  }
  return `role:${role}`;
}

/** `<prefix>.crt` and `<prefix>.key`. */
export function serviceCertificatePaths(prefix: string): { cert: string; key: string } {
  return { cert: `${prefix}.crt`, key: `${prefix}.key` };
}

/**
 * Checked before anything is signed: the directory of `prefix` exists (SERVICE_CERT_BAD_REQUEST) and,
 * unless `force`, neither output file does (SERVICE_CERT_OUTPUT_EXISTS).
 */
export async function assertOutputsWritable(prefix: string, opts: { force?: boolean } = {}): Promise<void> {
  const dir = dirname(resolve(prefix));
  const isDir = await stat(dir).then(
    (s) => s.isDirectory(),
    () => false,
  );
  if (!isDir) throw new ServiceCertError('SERVICE_CERT_BAD_REQUEST', `output directory ${dir} does not exist`);
  if (opts.force) return;
  for (const f of Object.values(serviceCertificatePaths(prefix))) {
    const exists = await access(f).then(
      () => true,
      () => false,
    );
    if (exists) throw new ServiceCertError('SERVICE_CERT_OUTPUT_EXISTS', `${f} exists; pass --force to replace it`);
  }
}

/**
 * Writes `<prefix>.key` (mode 0600) and `<prefix>.crt` (0644). Without `force` each is created with
 * O_EXCL: an existing file is never touched (SERVICE_CERT_OUTPUT_EXISTS), also when another process
 * creates it between a check and the write. With `force` each is replaced atomically (temp file +
 * rename), so a reader sees the old key or the new one, never a mix.
 */
export async function writeServiceCertificateFiles(prefix: string, c: { certPem: string; keyPem: string }, opts: { force?: boolean } = {}): Promise<{ cert: string; key: string }> {
  const paths = serviceCertificatePaths(prefix);
  if (opts.force) {
    await writeOrFail(paths.key, () => writeFileAtomic(paths.key, c.keyPem, 0o600));
    await writeOrFail(paths.cert, () => writeFileAtomic(paths.cert, c.certPem, 0o644));
    return paths;
  }
  await createExclusive(paths.key, c.keyPem, 0o600);
  try {
    await createExclusive(paths.cert, c.certPem, 0o644);
  } catch (e) {
    await rm(paths.key, { force: true }); // ours, just made: no key without its certificate
    throw e;
  }
  return paths;
}

async function createExclusive(path: string, data: string, mode: number): Promise<void> {
  let fh;
  try {
    fh = await open(path, 'wx', mode);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new ServiceCertError('SERVICE_CERT_OUTPUT_EXISTS', `${path} exists; pass --force to replace it`);
    throw new ServiceCertError('SERVICE_CERT_WRITE_FAILED', `cannot create ${path}: ${(e as Error).message}`, { cause: e });
  }
  try {
    await fh.chmod(mode); // whatever the umask
    await fh.writeFile(data);
    await fh.sync();
  } catch (e) {
    await fh.close();
    await rm(path, { force: true });
    throw new ServiceCertError('SERVICE_CERT_WRITE_FAILED', `cannot write ${path}: ${(e as Error).message}`, { cause: e });
  }
  await fh.close();
}

async function writeOrFail(path: string, write: () => Promise<void>): Promise<void> {
  try {
    await write();
  } catch (e) {
    throw new ServiceCertError('SERVICE_CERT_WRITE_FAILED', `cannot write ${path}: ${(e as Error).message}`, { cause: e });
  }
}
