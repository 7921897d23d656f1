import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CodedError } from '../../common/coded-error.js';
import { ManagedProcess, freePorts } from '../../common/managed-process.js';

/**
 * Software TPMs for the simulator and the demo: a "TPM manufacturer" (swtpm_localca's CA, generated on
 * first use, never checked in) and TPMs manufactured by it with swtpm_setup, each with RSA and ECC EKs
 * and their certificates in NV, exactly as a real TPM vendor ships them. Each TPM runs as its own swtpm
 * process on loopback ports (swtpm serves one connection at a time and has no resource manager).
 */
const run = promisify(execFile);

export interface Manufacturer {
  readonly dir: string;
  /** Root CA that the fleet must trust for this manufacturer's EK certificates. */
  rootPem(): string;
  /** Intermediate CA that signs EK certificates. */
  intermediatePem(): string;
}

export function createManufacturer(dir: string, platform = 'tpm-fleet-sim'): Manufacturer {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileSync(
    join(dir, 'swtpm-localca.conf'),
    [`statedir = ${dir}`, `signingkey = ${join(dir, 'signkey.pem')}`, `issuercert = ${join(dir, 'issuercert.pem')}`, `certserial = ${join(dir, 'certserial')}`, ''].join('\n'),
  );
  writeFileSync(join(dir, 'swtpm-localca.options'), `--platform-manufacturer ${platform}\n--platform-version 2.1\n--platform-model sim\n`);
  writeFileSync(
    join(dir, 'swtpm_setup.conf'),
    [
      'create_certs_tool = /usr/bin/swtpm_localca',
      `create_certs_tool_config = ${join(dir, 'swtpm-localca.conf')}`,
      `create_certs_tool_options = ${join(dir, 'swtpm-localca.options')}`,
      'active_pcr_banks = sha256',
      '',
    ].join('\n'),
  );
  const read = (file: string) => {
    const path = join(dir, file);
    if (!existsSync(path)) throw new CodedError('SWTPM_NOT_MANUFACTURED', `${file} exists only after the first TPM is manufactured`);
    return readFileSync(path, 'utf8');
  };
  return { dir, rootPem: () => read('swtpm-localca-rootca-cert.pem'), intermediatePem: () => read('issuercert.pem') };
}

/**
 * Runs swtpm_setup: a new TPM state with RSA + ECC EKs and EK certificates signed by `manufacturer`.
 * `signal` stops swtpm_setup (SIGTERM). Its scratch files go under `stateDir`, not the system's temp
 * directory, so removing `stateDir` removes them even when swtpm_setup was interrupted.
 */
export async function manufactureTpm(stateDir: string, manufacturer: Manufacturer, signal?: AbortSignal): Promise<void> {
  mkdirSync(join(stateDir, '.tmp'), { recursive: true, mode: 0o700 });
  try {
    await run('swtpm_setup', [
      '--tpm2',
      '--tpmstate',
      stateDir,
      '--create-ek-cert',
      '--create-platform-cert',
      '--config',
      join(manufacturer.dir, 'swtpm_setup.conf'),
      '--overwrite',
    ], { env: { ...process.env, TMPDIR: join(stateDir, '.tmp') }, ...(signal ? { signal } : {}) });
  } catch (e) {
    const err = e as { stderr?: string; stdout?: string; message: string };
    throw new CodedError('SWTPM_SETUP_FAILED', `swtpm_setup failed: ${(err.stderr || err.stdout || err.message).trim()}`, { cause: e });
  }
}

export class SwtpmProcess {
  readonly stateDir: string;
  readonly port: number;
  readonly #proc: ManagedProcess;

  private constructor(stateDir: string, port: number, proc: ManagedProcess) {
    this.stateDir = stateDir;
    this.port = port;
    this.#proc = proc;
  }

  get tcti(): string {
    return `swtpm:host=127.0.0.1,port=${this.port}`;
  }

  get pid(): number | undefined {
    return this.#proc.pid;
  }

  /** Serves `stateDir` on 127.0.0.1:port (control channel port+1); picks free ports unless given. */
  static async start(stateDir: string, port?: number): Promise<SwtpmProcess> {
    const p = port ?? (await freePorts(2));
    const proc = await ManagedProcess.start({
      name: 'swtpm',
      command: 'swtpm',
      args: [
        'socket',
        '--tpm2',
        '--server',
        `type=tcp,port=${p},bindaddr=127.0.0.1`,
        '--ctrl',
        `type=tcp,port=${p + 1},bindaddr=127.0.0.1`,
        '--flags',
        'not-need-init,startup-clear',
        '--tpmstate',
        `dir=${stateDir}`,
      ],
      ports: [p + 1],
    });
    return new SwtpmProcess(stateDir, p, proc);
  }

  stop(): Promise<void> {
    return this.#proc.stop();
  }
}
