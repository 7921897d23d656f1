import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './ports.js';
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
  /** Plain TCP (no TLS), anonymous allowed; only when started with `plainListener: true`. */
  readonly plainPort?: number;
  /** CA of the broker's server certificate (trust it as `ca`). */
  readonly caPem: string;
  /** CA the mTLS listener trusts for client certificates (unless `clientCaPem` was given). */
  readonly clientCa: TestCa;
  readonly dir: string;
  readonly configPath: string;
  readonly logPath: string;
  /** PID of mosquitto (process backend); undefined for the container backend. */
  readonly pid: number | undefined;
  /** SIGTERM (then SIGKILL after 3 s) or container stop; removes the temp dir. */
  stop(): Promise<void>;
  /** Stops and starts mosquitto with the same config on the same ports. */
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
  /**
   * Lines added to the generated config, before the first listener (global settings such as
   * `max_inflight_messages` or `message_size_limit`). A block starting with its own `listener` line
   * works too: the harness's listeners follow it. Ignored with `configText`.
   */
  extraConfig?: string;
  /** Also open a plain-TCP anonymous listener (`plainPort`), e.g. to prove a client refuses plaintext. */
  plainListener?: boolean;
  /** Full custom mosquitto.conf (e.g. the fleet's generated one); the harness provides ports, files and the process. */
  configText?: (ports: { enrollPort: number; tlsPort: number; bind: string }, files: BrokerFiles) => string;
}): Promise<TestBroker> {
  const dir = mkdtempSync(join(tmpdir(), 'mosquitto-'));
  const r = await runner();
  const [serverCa, clientCa] = await Promise.all([createTestCa('Test Broker CA'), createTestCa('Test Client CA')]);
  const server = await serverCa.issue({ cn: 'localhost', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], serverAuth: true });
  const file = (name: string, content: string) => {
    const p = join(dir, name);
    // 0644 (in a 0700 dir): throwaway test keys, readable whichever user mosquitto ends up as.
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
  const configFor = (tlsPort: number, enrollPort: number, plainPort: number | undefined) =>
    opts?.configText?.({ enrollPort, tlsPort, bind }, files) ??
    [
      'per_listener_settings true',
      // Without it QoS1 pipelining stalls ~44 ms per batch (FACTS.md).
      'set_tcp_nodelay true',
      'persistence false',
      // Started as root (CI, and always inside the container), mosquitto 2.0 drops to user `mosquitto`,
      // which cannot enter the 0700 temp dir mkdtemp made. Staying root is simpler than loosening the
      // dir; the files are 0644 anyway for any other user a container might run as.
      'user root',
      `log_dest file ${files.log}`,
      ...(opts?.extraConfig !== undefined ? ['# extraConfig', opts.extraConfig, '# end of extraConfig'] : []),
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
      ...(plainPort !== undefined ? [`listener ${plainPort} ${bind}`, 'allow_anonymous true', ...acl] : []),
      '',
    ].join('\n');
  const configPath = join(dir, 'mosquitto.conf');
  let tlsPort = 0;
  let enrollPort = 0;
  let plainPort: number | undefined;
  const svc = await startTracked(
    r,
    async () => {
      const ports: number[] = [];
      const want = opts?.plainListener && !opts.configText ? 3 : 2;
      while (ports.length < want) {
        const p = await freePort();
        if (!ports.includes(p)) ports.push(p);
      }
      [tlsPort, enrollPort] = ports as [number, number];
      plainPort = ports[2];
      file('mosquitto.conf', configFor(tlsPort, enrollPort, plainPort));
      return { name: 'mosquitto', command: 'mosquitto', args: ['-c', configPath], ports, mounts: [dir] };
    },
    dir,
  );
  return {
    host: '127.0.0.1',
    tlsPort,
    enrollPort,
    ...(plainPort !== undefined ? { plainPort } : {}),
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
