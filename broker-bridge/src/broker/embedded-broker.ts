import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ManagedProcess, freePorts } from '../../../common/managed-process.js';
import { generateMosquittoConfig } from './mosquitto-config.js';

/**
 * mosquitto run by us (the embedded fleet of the demo and simulator): writes the generated config,
 * ACLs and TLS files into `dir` and runs it on loopback. Production deployments run their own broker
 * with the same generated files (`broker-bridge` writes them; see docs/operations.md).
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
  readonly enrollPort?: number;
  readonly devicePort?: number;
}

export class EmbeddedBroker {
  readonly enrollPort: number;
  readonly devicePort: number;
  readonly dir: string;
  readonly #proc: ManagedProcess;

  private constructor(dir: string, enrollPort: number, devicePort: number, proc: ManagedProcess) {
    this.dir = dir;
    this.enrollPort = enrollPort;
    this.devicePort = devicePort;
    this.#proc = proc;
  }

  get enrollUrl(): string {
    return `mqtts://127.0.0.1:${this.enrollPort}`;
  }

  get deviceUrl(): string {
    return `mqtts://127.0.0.1:${this.devicePort}`;
  }

  get pid(): number | undefined {
    return this.#proc.pid;
  }

  static async start(opts: EmbeddedBrokerOptions): Promise<EmbeddedBroker> {
    mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
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
    const enrollAclFile = join(opts.dir, 'enroll.acl');
    const deviceAclFile = join(opts.dir, 'device.acl');
    const { conf, enrollAcl, deviceAcl } = generateMosquittoConfig({
      baseTopic: opts.baseTopic,
      enrollListener: { host: '127.0.0.1', port: enrollPort },
      deviceListener: { host: '127.0.0.1', port: devicePort },
      tls: paths,
      enrollAclFile,
      deviceAclFile,
      ...(opts.stationIdentities ? { stationIdentities: opts.stationIdentities } : {}),
      ...(opts.operatorIdentities ? { operatorIdentities: opts.operatorIdentities } : {}),
      logFile: join(opts.dir, 'mosquitto.log'),
      // As root, mosquitto would drop to user `mosquitto`, which cannot read the 0600 key we wrote.
      ...(process.getuid?.() === 0 ? { user: 'root' } : {}),
    });
    file('enroll.acl', enrollAcl);
    file('device.acl', deviceAcl);
    const confPath = file('mosquitto.conf', conf);
    const proc = await ManagedProcess.start({ name: 'mosquitto', command: existsSync('/usr/sbin/mosquitto') ? '/usr/sbin/mosquitto' : 'mosquitto', args: ['-c', confPath], ports: [enrollPort, devicePort] });
    return new EmbeddedBroker(opts.dir, enrollPort, devicePort, proc);
  }

  stop(): Promise<void> {
    return this.#proc.stop();
  }
}
