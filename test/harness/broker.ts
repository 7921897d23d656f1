import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePorts } from '../../common/managed-process.js';
import { createTestCa, type TestCa } from './pki.js';
import { runner } from './select.js';
import { startTracked } from './backend.js';

/** mosquitto with generated config: a mutual-TLS listener and an anonymous TLS listener. */
export interface TestBroker {
  readonly host: string;
  /** require_certificate true, use_identity_as_username true. */
  readonly tlsPort: number;
  /** TLS, no client certificate, anonymous allowed. */
  readonly enrollPort: number;
  /** CA of the broker's server certificate (trust it as `ca`). */
  readonly caPem: string;
  /** CA the mTLS listener trusts for client certificates (unless `clientCaPem` was given). */
  readonly clientCa: TestCa;
  readonly dir: string;
  readonly configPath: string;
  readonly logPath: string;
  readonly pid: number | undefined;
  stop(): Promise<void>;
  restart(): Promise<void>;
}

export interface BrokerFiles {
  readonly dir: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly serverCa: string;
  readonly clientCa: string;
  readonly log: string;
}

export async function startBroker(opts?: {
  /** ACL file contents applied to both listeners. */
  aclFile?: string;
  /** Trust this CA bundle for client certificates instead of a generated one. */
  clientCaPem?: string;
  /** Full custom mosquitto.conf (e.g. the fleet's generated one); the harness provides ports, files and the process. */
  configText?: (ports: { enrollPort: number; tlsPort: number; bind: string }, files: BrokerFiles) => string;
}): Promise<TestBroker> {
  const dir = mkdtempSync(join(tmpdir(), 'mosquitto-'));
  const r = await runner();
  const [serverCa, clientCa] = await Promise.all([createTestCa('Test Broker CA'), createTestCa('Test Client CA')]);
  const server = await serverCa.issue({ cn: 'localhost', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], serverAuth: true });
  const file = (name: string, content: string) => {
    const p = join(dir, name);
    // World-readable on purpose: in a container mosquitto reads them as another user. Throwaway test keys.
    writeFileSync(p, content, { mode: 0o644 });
    return p;
  };
  const files: BrokerFiles = {
    dir,
    serverCert: file('server.pem', server.certPem),
    serverKey: file('server-key.pem', server.keyPem!),
    serverCa: file('server-ca.pem', serverCa.certPem),
    clientCa: file('client-ca.pem', opts?.clientCaPem ?? clientCa.certPem),
    log: join(dir, 'mosquitto.log'),
  };
  const bind = r.bindAddress;
  const acl = opts?.aclFile !== undefined ? [`acl_file ${file('acl', opts.aclFile)}`] : [];
  const tls = [`certfile ${files.serverCert}`, `keyfile ${files.serverKey}`];
  const configFor = (tlsPort: number, enrollPort: number) =>
    opts?.configText?.({ enrollPort, tlsPort, bind }, files) ??
    [
      'per_listener_settings true',
      // Without it QoS1 pipelining stalls ~44 ms per batch (FACTS.md).
      'set_tcp_nodelay true',
      'persistence false',
      // Started as root, mosquitto would drop to user `mosquitto`; stay root so it can read the temp files.
      'user root',
      `log_dest file ${files.log}`,
      `listener ${tlsPort} ${bind}`,
      ...tls,
      `cafile ${files.clientCa}`,
      'require_certificate true',
      'use_identity_as_username true',
      'allow_anonymous false',
      ...acl,
      `listener ${enrollPort} ${bind}`,
      ...tls,
      'require_certificate false',
      'allow_anonymous true',
      ...acl,
      '',
    ].join('\n');
  const configPath = join(dir, 'mosquitto.conf');
  let tlsPort = 0;
  let enrollPort = 0;
  const svc = await startTracked(
    r,
    async () => {
      tlsPort = await freePorts(1);
      enrollPort = await freePorts(1);
      file('mosquitto.conf', configFor(tlsPort, enrollPort));
      return { name: 'mosquitto', command: 'mosquitto', args: ['-c', configPath], ports: [tlsPort, enrollPort], mounts: [dir] };
    },
    dir,
  );
  return {
    host: '127.0.0.1',
    tlsPort,
    enrollPort,
    caPem: serverCa.certPem,
    clientCa,
    dir,
    configPath,
    logPath: files.log,
    get pid() {
      return svc.pid;
    },
    stop: () => svc.stop(),
    restart: () => svc.restart(),
  };
}
