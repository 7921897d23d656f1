import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ManagedProcess, freePorts } from '../../../common/managed-process.js';
import { generateMosquittoConfig } from './mosquitto-config.js';

/**
 * mosquitto run by us (the embedded fleet of the demo and simulator): writes the generated config,
 * ACLs and TLS files into `dir` and runs it on loopback. Production deployments run their own broker
 * with the same generated files (`broker-bridge` writes them; see docs/operations.md).
 *
 * Outages for tests: `restart()` (clean stop, start again), `stop()` + `startAgain()` (a chosen
 * downtime), `kill()` (SIGKILL: no final database save). A start again uses the same ports, config and
 * persistence directory, so retained messages and persistent sessions come back as saved.
 */
export interface EmbeddedBrokerOptions {
  readonly dir: string;
  readonly baseTopic: string;
  readonly serverCertPem: string;
  readonly serverKeyPem: string;
  /** Bundle trusted for client certificates (fleet issuing chain + root). */
  readonly clientCaPem: string;
  readonly stationIdentities?: readonly string[];
  readonly operatorIdentities?: readonly string[];
  readonly auditorIdentities?: readonly string[];
  readonly enrollPort?: number;
  readonly devicePort?: number;
  /** Where mosquitto keeps its persistence database; default `dir/persistence`. */
  readonly persistenceDir?: string;
  /** Seconds between database saves; default 30 (mosquitto also saves on SIGTERM). */
  readonly autosaveIntervalSec?: number;
  /**
   * The issuing CA's first CRL (PEM): written to `dir/crl.pem` and set as the device listener's
   * `crlfile`. Replace it (atomically) and call `reload()` to make mosquitto read it again.
   */
  readonly crlPem?: string;
}

const MOSQUITTO = existsSync('/usr/sbin/mosquitto') ? '/usr/sbin/mosquitto' : 'mosquitto';

export class EmbeddedBroker {
  readonly enrollPort: number;
  readonly devicePort: number;
  readonly dir: string;
  readonly persistenceDir: string;
  /** The device listener's ACL file; the revocation service rewrites its revoked-identities section. */
  readonly deviceAclFile: string;
  /** The device listener's `crlfile`, when started with `crlPem`. */
  readonly crlFile: string | undefined;
  readonly #confPath: string;
  #proc: ManagedProcess | undefined;
  /** Serializes stop/start calls so an overlapping restart never runs two brokers on one port. */
  #lifecycle: Promise<unknown> = Promise.resolve();

  private constructor(dir: string, enrollPort: number, devicePort: number, persistenceDir: string, confPath: string, crlFile: string | undefined) {
    this.dir = dir;
    this.deviceAclFile = join(dir, 'device.acl');
    this.crlFile = crlFile;
    this.enrollPort = enrollPort;
    this.devicePort = devicePort;
    this.persistenceDir = persistenceDir;
    this.#confPath = confPath;
  }

  get enrollUrl(): string {
    return `mqtts://127.0.0.1:${this.enrollPort}`;
  }

  get deviceUrl(): string {
    return `mqtts://127.0.0.1:${this.devicePort}`;
  }

  get pid(): number | undefined {
    return this.#proc?.running ? this.#proc.pid : undefined;
  }

  get running(): boolean {
    return this.#proc?.running === true;
  }

  static async start(opts: EmbeddedBrokerOptions): Promise<EmbeddedBroker> {
    mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
    const persistenceDir = opts.persistenceDir ?? join(opts.dir, 'persistence');
    mkdirSync(persistenceDir, { recursive: true, mode: 0o700 });
    const file = (name: string, content: string, mode = 0o644) => {
      const path = join(opts.dir, name);
      writeFileSync(path, content, { mode });
      return path;
    };
    const enrollPort = opts.enrollPort ?? (await freePorts(1));
    const devicePort = opts.devicePort ?? (await freePorts(1));
    const paths = {
      serverCertFile: file('server.pem', opts.serverCertPem),
      serverKeyFile: file('server-key.pem', opts.serverKeyPem, 0o600),
      clientCaFile: file('client-ca.pem', opts.clientCaPem),
    };
    const crlFile = opts.crlPem === undefined ? undefined : file('crl.pem', opts.crlPem);
    const enrollAclFile = join(opts.dir, 'enroll.acl');
    const deviceAclFile = join(opts.dir, 'device.acl');
    const { conf, enrollAcl, deviceAcl } = generateMosquittoConfig({
      baseTopic: opts.baseTopic,
      enrollListener: { host: '127.0.0.1', port: enrollPort },
      deviceListener: { host: '127.0.0.1', port: devicePort },
      tls: paths,
      enrollAclFile,
      deviceAclFile,
      persistenceDir,
      ...(crlFile ? { crlFile } : {}),
      ...(opts.autosaveIntervalSec === undefined ? {} : { autosaveIntervalSec: opts.autosaveIntervalSec }),
      ...(opts.stationIdentities ? { stationIdentities: opts.stationIdentities } : {}),
      ...(opts.operatorIdentities ? { operatorIdentities: opts.operatorIdentities } : {}),
      ...(opts.auditorIdentities ? { auditorIdentities: opts.auditorIdentities } : {}),
      logFile: join(opts.dir, 'mosquitto.log'),
      // As root, mosquitto would drop to user `mosquitto`, which cannot read the 0600 key we wrote
      // nor write the 0700 persistence directory.
      ...(process.getuid?.() === 0 ? { user: 'root' } : {}),
    });
    file('enroll.acl', enrollAcl);
    file('device.acl', deviceAcl);
    const confPath = file('mosquitto.conf', conf);
    const broker = new EmbeddedBroker(opts.dir, enrollPort, devicePort, persistenceDir, confPath, crlFile);
    await broker.startAgain();
    return broker;
  }

  /**
   * Starts mosquitto (again) on the same ports with the same config and persistence directory; resolves
   * when both ports answer. A no-op while it runs.
   */
  startAgain(): Promise<void> {
    return this.#serialize(async () => {
      if (this.#proc?.running) return;
      this.#proc = await ManagedProcess.start({ name: 'mosquitto', command: MOSQUITTO, args: ['-c', this.#confPath], ports: [this.enrollPort, this.devicePort] });
    });
  }

  /** SIGTERM (mosquitto saves its database and ends every connection), SIGKILL after a grace period. Idempotent. */
  stop(): Promise<void> {
    return this.#serialize(async () => {
      await this.#proc?.stop();
    });
  }

  /** SIGKILL: no final save, so changes since the last autosave are lost, as in a power cut. Idempotent. */
  kill(): Promise<void> {
    return this.#serialize(async () => {
      const proc = this.#proc;
      if (!proc?.running || proc.pid === undefined) return;
      try {
        process.kill(proc.pid, 'SIGKILL');
      } catch {
        // ESRCH: it exited on its own meanwhile.
      }
      // Waits for the exit (the process is already dying; the SIGTERM it may still get is moot).
      await proc.stop();
    });
  }

  /**
   * SIGHUP: mosquitto rereads the ACL files and the CRL file (new handshakes; ACLs apply to open
   * sessions from the next delivery on). Returns false when the broker is not running (it reads both
   * files when it starts again).
   */
  reload(): boolean {
    const pid = this.pid;
    if (pid === undefined) return false;
    try {
      process.kill(pid, 'SIGHUP');
      return true;
    } catch {
      return false; // ESRCH: it exited meanwhile
    }
  }

  /** A clean restart: `stop()` then `startAgain()`. */
  async restart(): Promise<void> {
    await this.stop();
    await this.startAgain();
  }

  #serialize<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#lifecycle.then(fn, fn);
    this.#lifecycle = run.catch(() => undefined);
    return run;
  }
}
