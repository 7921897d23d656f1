import { createHash, createPrivateKey, createPublicKey, randomInt, X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { systemClock, type Clock } from '../../common/clock.js';
import { CodedError, isCodedError } from '../../common/coded-error.js';
import { freePorts } from '../../common/managed-process.js';
import type { EkTrustStore } from '../../native/lib/ek-certificate.js';
// The test PKI builders make exactly the TCG-profile chains real vendors ship; a simulated vendor is their use.
import { defaultEkExtensions, ecKey, encodeName, testCa, testEkCertificate, type TestCa, type TestExtension, type TestName } from '../../native/lib/ek-test-pki.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import { SwtpmProcess } from './swtpm.js';

/**
 * The simulator's TPM factory: a TPM vendor in one process. Its manufacturer CA (ECDSA P-256 root and
 * intermediate, generated once and kept in memory, or cached in `caDir`) certifies the EK of every TPM
 * it makes. A TPM is a fresh swtpm on an empty state directory: libtpms manufactures itself at first
 * start with new random seeds, so every TPM has its own EK. The factory derives the ECC P-256 EK (TCG
 * template L-2), issues its TCG-profile EK certificate, and writes it where vendors do: NV 0x01c0000a,
 * defined under the platform hierarchy and write-locked (NativeTpm.writeEkCertificate). The agent and
 * the station read that index first for 'ecc'.
 *
 * Measured (test/bench/factory.ts, 2 cores): ~36 TPMs/s, against ~2/s for swtpm_setup + swtpm_localca
 * (sim/src/swtpm.ts): no swtpm_setup, certtool or second swtpm start per TPM, no RSA key generation. The
 * swtpm started here keeps running for the device.
 */
export type FactoryErrorCode = 'FACTORY_STATE_EXISTS' | 'FACTORY_CA_INVALID' | 'FACTORY_MANUFACTURE_FAILED';

export class FactoryError extends CodedError<FactoryErrorCode> {}

export interface TpmFactoryOptions {
  /**
   * Directory of the manufacturer CA (`ca.json`, mode 0600): loaded when present, else generated and
   * written there. Absent: generated in memory for this factory only.
   */
  readonly caDir?: string;
  /** Manufacturer name in the CA subjects (O and CN). Default 'TPM Fleet Simulated TPMs'. */
  readonly name?: string;
  /** Dates of the certificates issued. Default: the system clock. */
  readonly clock?: Clock;
}

export interface ManufacturedTpm {
  /** The TPM, running (the caller stops it). */
  readonly tpm: SwtpmProcess;
  /** DER EK certificate, as written to NV 0x01c0000a. */
  readonly ekCertificateDer: Buffer;
  /** hex SHA-256 of the EK's SubjectPublicKeyInfo: the EK's identity in the fleet inventory. */
  readonly ekPublicHash: string;
  readonly ekKind: 'ecc';
}

export interface ManufactureManyOptions {
  /** TPMs made at once (default 4: about two per core keeps both swtpm and this process busy). */
  readonly concurrency?: number;
  /** Stops starting new TPMs; what was made is stopped and the call rejects. */
  readonly signal?: AbortSignal;
  /** Called after each TPM, e.g. for a progress line. */
  readonly onManufactured?: (index: number, tpm: ManufacturedTpm) => void;
}

const DAY = 86_400_000;
/** EK certificates outlive the devices (vendors issue 20–30 years); the fleet ignores EK expiry by default. */
const EK_VALIDITY_DAYS = 25 * 365;
const START_ATTEMPTS = 3;
const CA_FILE = 'ca.json';

export class TpmFactory {
  readonly #root: TestCa;
  readonly #intermediate: TestCa;
  readonly #clock: Clock;
  /** The TCG EK extensions of an ECC EK under the intermediate: the same for every TPM (computing the AKI costs more than signing). */
  readonly #ekExtensions: readonly TestExtension[];
  /** Ports handed to swtpm processes still starting: parallel starts in this process never pick the same pair. */
  readonly #starting = new Set<number>();

  private constructor(root: TestCa, intermediate: TestCa, clock: Clock) {
    this.#root = root;
    this.#intermediate = intermediate;
    this.#clock = clock;
    // Only the EK's key type shapes the list (ECC: keyUsage keyAgreement); any EC key stands for the EKs.
    this.#ekExtensions = defaultEkExtensions(intermediate.key.publicKey, intermediate.key.publicKey);
  }

  static async create(opts: TpmFactoryOptions = {}): Promise<TpmFactory> {
    const clock = opts.clock ?? systemClock;
    const name = opts.name ?? 'TPM Fleet Simulated TPMs';
    const cached = opts.caDir ? loadCa(opts.caDir) : undefined;
    if (cached) return new TpmFactory(cached.root, cached.intermediate, clock);
    const now = clock.now();
    const validity = { notBefore: now - DAY, notAfter: now + 30 * 365 * DAY };
    const root = testCa({ name: [['C', 'US'], ['O', name], ['CN', `${name} EK Root CA`]], key: ecKey('P-256'), pathLen: 1, ...validity });
    const intermediate = testCa({ name: [['C', 'US'], ['O', name], ['CN', `${name} EK Issuing CA`]], issuer: root, key: ecKey('P-256'), pathLen: 0, ...validity });
    if (opts.caDir) saveCa(opts.caDir, root, intermediate);
    return new TpmFactory(root, intermediate, clock);
  }

  /** The root the fleet must trust for this factory's EK certificates. */
  rootPem(): string {
    return this.#root.pem;
  }

  /** The intermediate that signs EK certificates. */
  intermediatePem(): string {
    return this.#intermediate.pem;
  }

  /** The fleet's (and the station's) trust in this manufacturer. */
  ekTrust(): EkTrustStore {
    return { roots: [this.rootPem()], intermediates: [this.intermediatePem()] };
  }

  /**
   * Makes one TPM in `stateDir` (created if missing; must not hold a TPM yet) and returns it running.
   * Errors: FACTORY_STATE_EXISTS; FACTORY_MANUFACTURE_FAILED (swtpm did not start, or the TPM refused),
   * with the cause. Nothing keeps running after a failure.
   */
  async manufacture(stateDir: string): Promise<ManufacturedTpm> {
    if (existsSync(join(stateDir, 'tpm2-00.permall'))) {
      throw new FactoryError('FACTORY_STATE_EXISTS', `${stateDir} already holds a TPM; a new TPM needs an empty state directory`);
    }
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    for (let attempt = 1; ; attempt++) {
      const tpm = await this.#start(stateDir);
      try {
        return { tpm, ...(await this.#provision(tpm)), ekKind: 'ecc' };
      } catch (e) {
        await tpm.stop();
        // Nothing answered on the TPM port: the swtpm lost its port to another process after the
        // control port answered. Its state was never used: start over on new ports.
        if (isCodedError(e) && e.code === 'TPM_UNREACHABLE' && attempt < START_ATTEMPTS) {
          rmSync(join(stateDir, 'tpm2-00.permall'), { force: true });
          continue;
        }
        throw new FactoryError('FACTORY_MANUFACTURE_FAILED', `TPM in ${stateDir}: ${(e as Error).message}`, { cause: e });
      }
    }
  }

  /**
   * Makes `count` TPMs, `dirFor(i)` each, at most `concurrency` at a time; resolves them in index order.
   * On the first failure (or abort) no new TPM is started, the ones made are stopped, and it rejects.
   */
  async manufactureMany(count: number, dirFor: (index: number) => string, opts: ManufactureManyOptions = {}): Promise<ManufacturedTpm[]> {
    const concurrency = Math.max(1, Math.min(opts.concurrency ?? 4, count));
    const made: ManufacturedTpm[] = new Array(count);
    let next = 0;
    let failure: unknown;
    const worker = async () => {
      while (failure === undefined && next < count) {
        if (opts.signal?.aborted) {
          failure = new FactoryError('FACTORY_MANUFACTURE_FAILED', 'manufacturing aborted', { cause: opts.signal.reason });
          return;
        }
        const i = next++;
        try {
          made[i] = await this.manufacture(dirFor(i));
          opts.onManufactured?.(i, made[i]);
        } catch (e) {
          failure ??= e;
        }
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    if (failure !== undefined) {
      await Promise.all(made.filter(Boolean).map((m) => m.tpm.stop()));
      throw failure;
    }
    return made;
  }

  /** swtpm on a port pair no other start of this factory is using; retried when another process won the race for it. */
  async #start(stateDir: string): Promise<SwtpmProcess> {
    let lastError: unknown;
    for (let attempt = 0; attempt < START_ATTEMPTS; attempt++) {
      let port = await freePorts(2);
      while (this.#starting.has(port) || this.#starting.has(port + 1) || this.#starting.has(port - 1)) port = await freePorts(2);
      this.#starting.add(port);
      try {
        return await SwtpmProcess.start(stateDir, port);
      } catch (e) {
        lastError = e;
      } finally {
        this.#starting.delete(port);
      }
    }
    throw new FactoryError('FACTORY_MANUFACTURE_FAILED', `swtpm did not start for ${stateDir}: ${(lastError as Error).message}`, { cause: lastError });
  }

  /** EK → certificate → NV, on a TPM fresh from its first start. */
  async #provision(tpm: SwtpmProcess): Promise<{ ekCertificateDer: Buffer; ekPublicHash: string }> {
    const t = await NativeTpm.open(tpm.tcti);
    try {
      const ek = await t.createEk('ecc');
      await t.flush(ek);
      const now = this.#clock.now();
      const ekCertificateDer = testEkCertificate({
        issuer: this.#intermediate,
        ek: createPublicKey({ key: ek.spki, format: 'der', type: 'spki' }),
        serial: randomInt(1, 2 ** 48 - 1),
        notBefore: now - DAY,
        notAfter: now + EK_VALIDITY_DAYS * DAY,
        extensions: [...this.#ekExtensions],
      });
      await t.writeEkCertificate('ecc', ekCertificateDer);
      return { ekCertificateDer, ekPublicHash: createHash('sha256').update(ek.spki).digest('hex') };
    } finally {
      await t.close();
    }
  }
}

interface StoredCa {
  /** v1: the name as given; v2: the subject Name's DER in hex (any encoding, vendor quirks included). */
  readonly name?: TestName;
  readonly nameDer?: string;
  readonly certPem: string;
  readonly keyPem: string;
}

function saveCa(dir: string, root: TestCa, intermediate: TestCa): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const store = (ca: TestCa): StoredCa => ({
    nameDer: (Buffer.isBuffer(ca.name) ? ca.name : encodeName(ca.name)).toString('hex'),
    certPem: ca.pem,
    keyPem: ca.key.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
  });
  writeFileSync(join(dir, CA_FILE), JSON.stringify({ v: 2, root: store(root), intermediate: store(intermediate) }), { mode: 0o600 });
}

function loadCa(dir: string): { root: TestCa; intermediate: TestCa } | undefined {
  const path = join(dir, CA_FILE);
  if (!existsSync(path)) return undefined;
  try {
    const raw = JSON.parse(readFileSync(path, 'utf8')) as { v: number; root: StoredCa; intermediate: StoredCa };
    if (raw.v !== 1 && raw.v !== 2) throw new Error(`unknown version ${String(raw.v)}`);
    const load = (s: StoredCa): TestCa => {
      const privateKey = createPrivateKey(s.keyPem);
      const cert = new X509Certificate(s.certPem);
      if (!cert.checkPrivateKey(privateKey)) throw new Error('a CA key does not match its certificate');
      const name = s.nameDer !== undefined ? Buffer.from(s.nameDer, 'hex') : s.name;
      if (!name) throw new Error('a CA has no name');
      return { name, key: { privateKey, publicKey: createPublicKey(privateKey) }, der: cert.raw, pem: s.certPem };
    };
    return { root: load(raw.root), intermediate: load(raw.intermediate) };
  } catch (e) {
    throw new FactoryError('FACTORY_CA_INVALID', `${path}: ${(e as Error).message}`, { cause: e });
  }
}
