import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePortPair } from './ports.js';
import { runner } from './select.js';
import { track } from './registry.js';
import { startTracked, type ServiceSpec, type TrackedService } from './backend.js';

const run = promisify(execFile);

/**
 * A TPM manufacturer: swtpm_localca's CA (root + intermediate "signing key" that signs the EK and
 * platform certificates), generated at test time in `dir`, never checked in. The root is what a fleet
 * trusts for this vendor's EK certificates.
 */
export interface Manufacturer {
  readonly dir: string;
  rootPem(): string;
  intermediatePem(): string;
}

/** A manufactured software TPM (RSA + ECC P-384 EKs with certificates in NV) served by swtpm. */
export interface TestTpm {
  /** `swtpm:host=127.0.0.1,port=<port>` (the mapped port for the container backend). */
  readonly tcti: string;
  readonly host: string;
  readonly port: number;
  readonly ctrlPort: number;
  readonly stateDir: string;
  /** Root of the manufacturer CA that signed the EK certificates (generated for this test run). */
  readonly manufacturerRootPem: string;
  /** swtpm_localca always makes a root and an intermediate; EK certificates are issued by the intermediate. */
  readonly manufacturerIntermediatePem: string;
  readonly manufacturerCaDir: string;
  readonly manufacturer: Manufacturer;
  /** PID of the swtpm process (process backend); undefined for the container backend. */
  readonly pid: number | undefined;
  /** Orderly TPM2_Shutdown(STATE), swtpm_ioctl -s, then SIGTERM/SIGKILL (or container stop); removes the state. */
  stop(): Promise<void>;
  /** Orderly stop, then swtpm again on the same state and the same ports (tcti unchanged). */
  restart(): Promise<void>;
}

const manufacturers = new Map<string, Manufacturer & { ready: Promise<void> }>();

/**
 * Writes swtpm_setup.conf, swtpm-localca.conf and swtpm-localca.options into `dir` (unless present)
 * and generates the CA there with swtpm_localca (once; swtpm_localca creates the root and the
 * intermediate when the configured signing key is missing).
 */
function manufacturerAt(dir: string): Manufacturer & { ready: Promise<void> } {
  const known = manufacturers.get(dir);
  if (known) return known;
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const file = (name: string, lines: string[]) => {
    const p = join(dir, name);
    if (!existsSync(p)) writeFileSync(p, [...lines, ''].join('\n'));
    return p;
  };
  const localcaConf = file('swtpm-localca.conf', [
    `statedir = ${dir}`,
    `signingkey = ${join(dir, 'signkey.pem')}`,
    `issuercert = ${join(dir, 'issuercert.pem')}`,
    `certserial = ${join(dir, 'certserial')}`,
  ]);
  const localcaOptions = file('swtpm-localca.options', ['--platform-manufacturer tpm-fleet-test', '--platform-version 2.1', '--platform-model swtpm']);
  file('swtpm_setup.conf', [
    'create_certs_tool = /usr/bin/swtpm_localca',
    `create_certs_tool_config = ${localcaConf}`,
    `create_certs_tool_options = ${localcaOptions}`,
    'active_pcr_banks = sha256',
  ]);
  const read = (name: string) => readFileSync(join(dir, name), 'utf8');
  const m = {
    dir,
    rootPem: () => read('swtpm-localca-rootca-cert.pem'),
    intermediatePem: () => read('issuercert.pem'),
    ready: existsSync(join(dir, 'issuercert.pem')) ? Promise.resolve() : generateCa(dir, localcaConf, localcaOptions),
  };
  m.ready.catch(() => manufacturers.delete(dir));
  manufacturers.set(dir, m);
  return m;
}

/** Makes swtpm_localca create its root and signing CA now, by certifying a throwaway EC key. */
async function generateCa(dir: string, conf: string, options: string): Promise<void> {
  const jwk = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'jwk' });
  const hex = (s: string | undefined) => Buffer.from(s ?? '', 'base64url').toString('hex');
  const out = mkdtempSync(join(tmpdir(), 'localca-'));
  try {
    await run('swtpm_localca', [
      '--type', 'ek', '--ek', `x=${hex(jwk.x)},y=${hex(jwk.y)}`, '--dir', out, '--tpm2',
      '--configfile', conf, '--optsfile', options,
      '--tpm-spec-family', '2.0', '--tpm-spec-revision', '164', '--tpm-spec-level', '0',
      '--tpm-manufacturer', 'id:00001014', '--tpm-model', 'swtpm', '--tpm-version', 'id:20191023', '--vmid', 'harness',
    ]);
  } catch (e) {
    const err = e as { stderr?: string; stdout?: string; message: string };
    throw new Error(`swtpm_localca could not create the manufacturer CA in ${dir}: ${(err.stderr || err.stdout || err.message).trim()}`, { cause: e });
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
  if (!existsSync(join(dir, 'swtpm-localca-rootca-cert.pem')) || !existsSync(join(dir, 'issuercert.pem'))) {
    throw new Error(`swtpm_localca ran but left no root/issuer certificate in ${dir}`);
  }
}

function newManufacturerDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'tpm-manufacturer-'));
  track({
    stop: async () => {
      manufacturers.delete(dir);
      if (defaultManufacturer?.dir === dir) defaultManufacturer = undefined;
      rmSync(dir, { recursive: true, force: true });
    },
  });
  return dir;
}

let defaultManufacturer: Manufacturer | undefined;

/** A TPM manufacturer of its own (e.g. one the fleet does not trust); its CA is generated on first use. */
export function newManufacturer(): Manufacturer {
  return manufacturerAt(newManufacturerDir());
}

/** A second, independent manufacturer CA, generated now (root and intermediate readable right away). */
export async function createManufacturerCa(): Promise<{ dir: string; rootPem: string; intermediatePem: string }> {
  const m = manufacturerAt(newManufacturerDir());
  await m.ready;
  return { dir: m.dir, rootPem: m.rootPem(), intermediatePem: m.intermediatePem() };
}

/** Runs swtpm_setup: a new TPM state with RSA + ECC EKs, their certificates and a platform certificate. */
async function manufactureTpm(stateDir: string, m: Manufacturer): Promise<void> {
  try {
    await run('swtpm_setup', [
      '--tpm2', '--tpmstate', stateDir, '--create-ek-cert', '--create-platform-cert',
      '--config', join(m.dir, 'swtpm_setup.conf'), '--overwrite',
    ]);
  } catch (e) {
    const err = e as { stderr?: string; stdout?: string; message: string };
    throw new Error(`swtpm_setup failed: ${(err.stderr || err.stdout || err.message).trim()}`, { cause: e });
  }
}

/**
 * Sends TPM2_Shutdown(TPM_SU_STATE) on the TPM's command port. Without it, a swtpm stopped after
 * dictionary-attack-protected keys were used counts a disorderly shutdown: the lockout counter goes up
 * by one at the next start, and after a few such restarts the TPM locks out. Resolves false when the
 * TPM did not answer in time (swtpm serves one connection at a time: a client still connected blocks it).
 */
export function tpmShutdownState(host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection({ host, port });
    let got = Buffer.alloc(0);
    const done = (ok: boolean) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    // tag TPM_ST_NO_SESSIONS, size 12, TPM_CC_Shutdown, TPM_SU_STATE
    sock.once('connect', () => sock.write(Buffer.from('80010000000c000001450001', 'hex')));
    sock.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= 10) done(got.readUInt32BE(6) === 0);
    });
    sock.once('error', () => done(false));
    sock.once('close', () => done(false));
  });
}

/** Orderly end of a swtpm: TPM2_Shutdown(STATE), then the control channel's shutdown (swtpm exits). */
async function orderlyShutdown(port: number): Promise<void> {
  await tpmShutdownState('127.0.0.1', port);
  await run('swtpm_ioctl', ['--tcp', `127.0.0.1:${port + 1}`, '-s'], { timeout: 2000 }).catch(() => undefined);
}

/**
 * Starts a freshly manufactured TPM (swtpm_setup, ~0.5 s: distinct EKs for every TPM, and no
 * dictionary-attack counter carried over), served by swtpm on a free port pair.
 * Manufacturer: `manufacturer`, else `manufacturerCaDir` (a dir from createManufacturerCa), else one
 * per test worker.
 */
export async function startTpm(opts?: { manufacturer?: Manufacturer; manufacturerCaDir?: string }): Promise<TestTpm> {
  const m = opts?.manufacturer
    ? manufacturerAt(opts.manufacturer.dir)
    : opts?.manufacturerCaDir
      ? manufacturerAt(opts.manufacturerCaDir)
      : manufacturerAt((defaultManufacturer ??= newManufacturer()).dir);
  await m.ready;
  const stateDir = mkdtempSync(join(tmpdir(), 'swtpm-state-'));
  let svc: TrackedService;
  try {
    await manufactureTpm(stateDir, m);
    const r = await runner();
    svc = await startTracked(
      r,
      async (): Promise<ServiceSpec> => {
        const [port, ctrlPort] = await freePortPair();
        return {
          name: 'swtpm',
          command: 'swtpm',
          args: ['socket', '--tpm2', '--server', `type=tcp,port=${port},bindaddr={bind}`, '--ctrl', `type=tcp,port=${ctrlPort},bindaddr={bind}`,
            '--flags', 'not-need-init,startup-clear', '--tpmstate', `dir=${stateDir}`],
          ports: [port, ctrlPort],
          mounts: [stateDir],
        };
      },
      stateDir,
      (spec) => orderlyShutdown(spec.ports[0]!),
    );
  } catch (e) {
    rmSync(stateDir, { recursive: true, force: true });
    throw e;
  }
  const port = svc.ports[0]!;
  const service = svc;
  return {
    tcti: `swtpm:host=127.0.0.1,port=${port}`,
    host: '127.0.0.1',
    port,
    ctrlPort: port + 1,
    stateDir,
    manufacturerRootPem: m.rootPem(),
    manufacturerIntermediatePem: m.intermediatePem(),
    manufacturerCaDir: m.dir,
    manufacturer: m,
    get pid() {
      return service.pid;
    },
    stop: () => service.stop(),
    restart: () => service.restart(),
  };
}
