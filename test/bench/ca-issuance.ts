import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { generateKeyPairSync, webcrypto } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { systemClock } from '../../common/clock.js';
import { createCa, type CaMaterial } from '../../broker-bridge/src/ca/ca-setup.js';
import { parseAndVerifyCsr } from '../../broker-bridge/src/ca/csr.js';
import { pemBlocks, toPem } from '../../common/der.js';
import { CertificateIssuer } from '../../broker-bridge/src/ca/issuer.js';
import type { Pkcs11Ca } from '../../broker-bridge/src/ca/pkcs11-ca.js';
import { startSoftHsm } from '../harness/softhsm.js';

/**
 * `npm run bench:ca`: CSR -> signed PEM certificate, per second, in one Node process with N requests
 * in flight, for the file-key CA, the PKCS#11 CA (SoftHSM2) and the naive @peculiar/x509 path
 * (Pkcs10CertificateRequest + verify + X509CertificateGenerator.create + PEM). All three include the
 * CSR parse and signature check. Run under `taskset -c 0` for a strict one-core figure: the PKCS#11
 * backend's async C_Sign otherwise runs on the libuv thread pool.
 */

export interface BenchIssuanceOptions {
  /** Measured time per variant. */
  readonly durationMs?: number;
  readonly warmupMs?: number;
  /** Requests in flight. */
  readonly concurrency?: number;
  /** Distinct device keys/CSRs cycled through. */
  readonly csrCount?: number;
  readonly pkcs11Sessions?: number;
  readonly pkcs11SignMode?: 'async' | 'sync';
  readonly log?: (line: string) => void;
}

export interface BenchIssuanceResult {
  readonly fileCertsPerSec: number;
  readonly pkcs11CertsPerSec: number;
  readonly naiveCertsPerSec: number;
  /** CKR_OPERATION_ACTIVE seen by the PKCS#11 backend during the run; must be 0. */
  readonly pkcs11OperationActive: number;
}

const TRUST_DOMAIN = 'bench.fleet';
const LIFETIME_SEC = 30 * 86_400;
const BACKDATE_SEC = 60;

export async function benchIssuance(opts: BenchIssuanceOptions = {}): Promise<BenchIssuanceResult> {
  const durationMs = opts.durationMs ?? 3000;
  const warmupMs = opts.warmupMs ?? 300;
  const concurrency = opts.concurrency ?? 8;
  const log = opts.log ?? (() => {});
  const dir = await mkdtemp(join(tmpdir(), 'bench-ca-'));
  const hsm = await startSoftHsm({ tokenLabel: 'bench-ca' });
  const prevConf = process.env['SOFTHSM2_CONF'];
  process.env['SOFTHSM2_CONF'] = hsm.env.SOFTHSM2_CONF; // before the module's C_Initialize
  const opened: CaMaterial[] = [];
  try {
    const csrs = await makeCsrs(opts.csrCount ?? 64);
    const names = { root: { commonName: 'Bench Root CA' }, issuing: { commonName: 'Bench Issuing CA' } };

    const fileCa = await createCa({
      outDir: join(dir, 'file'),
      clock: systemClock,
      trustDomain: TRUST_DOMAIN,
      ...names,
      backend: { kind: 'file', keyPath: join(dir, 'issuing-key.pem') },
    });
    opened.push(fileCa);
    const p11Ca = await createCa({
      outDir: join(dir, 'pkcs11'),
      clock: systemClock,
      trustDomain: TRUST_DOMAIN,
      ...names,
      backend: {
        kind: 'pkcs11',
        modulePath: hsm.modulePath,
        tokenLabel: hsm.tokenLabel,
        pin: hsm.pin,
        keyLabel: 'bench-issuing',
        sessions: opts.pkcs11Sessions ?? 4,
        signMode: opts.pkcs11SignMode ?? 'async',
      },
    });
    opened.push(p11Ca);

    const fast = (ca: CaMaterial) => {
      const issuer = new CertificateIssuer({
        backend: ca.backend,
        issuingCertificate: ca.issuingCertificatePem,
        clock: systemClock,
        trustDomain: TRUST_DOMAIN,
      });
      return async (i: number): Promise<string> => {
        const csr = parseAndVerifyCsr(csrs[i % csrs.length] as Buffer);
        const res = await issuer.issue({
          deviceId: csr.commonName ?? '',
          publicKeySpki: csr.publicKeySpki,
          lifetimeSec: LIFETIME_SEC,
          backdateSec: BACKDATE_SEC,
          trustDomain: TRUST_DOMAIN,
        });
        return toPem(res.certificateDer, 'CERTIFICATE');
      };
    };
    const naive = await naiveIssuer(fileCa, join(dir, 'issuing-key.pem'), csrs);

    // Each path must produce a certificate before it is timed.
    for (const fn of [fast(fileCa), fast(p11Ca), naive]) {
      const pem = await fn(0);
      if (!pem.startsWith('-----BEGIN CERTIFICATE-----')) throw new Error('bench path produced no certificate');
    }

    const fileCertsPerSec = await measure(fast(fileCa), warmupMs, durationMs, concurrency);
    log(`file    ${fileCertsPerSec.toFixed(0)} certs/s`);
    const pkcs11CertsPerSec = await measure(fast(p11Ca), warmupMs, durationMs, concurrency);
    log(`pkcs11  ${pkcs11CertsPerSec.toFixed(0)} certs/s`);
    const naiveCertsPerSec = await measure(naive, warmupMs, durationMs, concurrency);
    log(`naive   ${naiveCertsPerSec.toFixed(0)} certs/s`);
    const pkcs11OperationActive = (p11Ca.backend as Pkcs11Ca).metrics().operationActive;
    return { fileCertsPerSec, pkcs11CertsPerSec, naiveCertsPerSec, pkcs11OperationActive };
  } finally {
    for (const ca of opened) await ca.backend.close();
    if (prevConf === undefined) delete process.env['SOFTHSM2_CONF'];
    else process.env['SOFTHSM2_CONF'] = prevConf;
    await hsm.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

async function measure(
  fn: (i: number) => Promise<unknown>,
  warmupMs: number,
  durationMs: number,
  concurrency: number,
): Promise<number> {
  const run = async (ms: number): Promise<{ n: number; elapsed: number }> => {
    let next = 0;
    let done = 0;
    const t0 = performance.now();
    const end = t0 + ms;
    const worker = async (): Promise<void> => {
      while (performance.now() < end) {
        await fn(next++);
        done++;
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    return { n: done, elapsed: performance.now() - t0 };
  };
  await run(warmupMs);
  const { n, elapsed } = await run(durationMs);
  return (n * 1000) / elapsed;
}

/** Distinct device keys and DER CSRs (CN = device id), made with @peculiar/x509 as a device would. */
async function makeCsrs(count: number): Promise<Buffer[]> {
  x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const out: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const keys = await webcrypto.subtle.generateKey(alg, false, ['sign', 'verify']);
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=bench-device-${i}`, keys, signingAlgorithm: alg });
    out.push(Buffer.from(csr.rawData));
  }
  return out;
}

/** The straightforward @peculiar/x509 issuance path, same profile, same issuing CA key. */
async function naiveIssuer(ca: CaMaterial, keyPath: string, csrs: Buffer[]): Promise<(i: number) => Promise<string>> {
  const [pkcs8] = pemBlocks(await readFile(keyPath, 'utf8'), 'PRIVATE KEY');
  if (!pkcs8) throw new Error('no issuing key');
  const signingKey = await webcrypto.subtle.importKey('pkcs8', pkcs8, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']);
  const issuingCert = new x509.X509Certificate(ca.issuingCertificatePem);
  const aki = issuingCert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId;
  if (!aki) throw new Error('issuing CA has no SKI');
  const alg = { name: 'ECDSA', hash: 'SHA-256' };
  return async (i: number): Promise<string> => {
    const csr = new x509.Pkcs10CertificateRequest(csrs[i % csrs.length] as Buffer);
    if (!(await csr.verify())) throw new Error('CSR signature');
    const cn = csr.subjectName.getField('CN')[0] ?? '';
    const now = Date.now();
    const notBefore = new Date(Math.floor(now / 1000) * 1000 - BACKDATE_SEC * 1000);
    const cert = await x509.X509CertificateGenerator.create({
      subject: [{ CN: [cn] }],
      issuer: issuingCert.subject,
      notBefore,
      notAfter: new Date(notBefore.getTime() + LIFETIME_SEC * 1000),
      publicKey: csr.publicKey,
      signingKey,
      signingAlgorithm: alg,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
        await x509.SubjectKeyIdentifierExtension.create(csr.publicKey),
        new x509.AuthorityKeyIdentifierExtension(aki),
        new x509.SubjectAlternativeNameExtension([{ type: 'url', value: `spiffe://${TRUST_DOMAIN}/device/${cn}` }]),
      ],
    });
    return cert.toString('pem');
  };
}
