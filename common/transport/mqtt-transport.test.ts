import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MqttTransport, type MqttTransportOptions } from './mqtt-transport.js';
import { request } from './request.js';
import { TransportError, type IncomingMessage } from './transport.js';

// ---- a real mosquitto on a loopback port, TLS with client certificates made by the openssl CLI ----

const MOSQUITTO = '/usr/sbin/mosquitto';

interface Pki {
  ca: Buffer;
  otherCa: Buffer;
  clientCert: Buffer;
  clientKey: Buffer;
}

function makePki(dir: string): Pki {
  const ssl = (...args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  };
  const ecKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  ssl('req', '-x509', ...ecKey, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=transport-test-ca');
  ssl('req', '-x509', ...ecKey, '-keyout', 'other-ca.key', '-out', 'other-ca.crt', '-days', '2', '-subj', '/CN=transport-test-ca');
  writeFileSync(join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  writeFileSync(join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\n');
  for (const [name, cn] of [
    ['server', '127.0.0.1'],
    ['client', 'device-1'],
  ] as const) {
    ssl('req', ...ecKey, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
    ssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-out', `${name}.crt`, '-extfile', `${name}.ext`);
  }
  const read = (f: string): Buffer => readFileSync(join(dir, f));
  return { ca: read('ca.crt'), otherCa: read('other-ca.crt'), clientCert: read('client.crt'), clientKey: read('client.key') };
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (addr && typeof addr === 'object' ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

async function waitForPort(port: number, proc: ChildProcess, log: () => string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`mosquitto exited with ${proc.exitCode}: ${log()}`);
    const up = await new Promise<boolean>((resolve) => {
      const s = netConnect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (up) return;
    if (Date.now() > deadline) throw new Error(`mosquitto did not listen on ${port}: ${log()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

class Mosquitto {
  proc: ChildProcess | undefined;
  log = '';
  constructor(
    readonly dir: string,
    readonly port: number,
  ) {}

  configure(): void {
    writeFileSync(join(this.dir, 'acl'), 'pattern readwrite t/#\npattern deny t/denied\n');
    writeFileSync(
      join(this.dir, 'mosquitto.conf'),
      [
        `listener ${this.port} 127.0.0.1`,
        'allow_anonymous true',
        'set_tcp_nodelay true',
        // As root mosquitto would switch to user mosquitto, which cannot read the temp dir.
        'user root',
        'persistence false',
        `cafile ${join(this.dir, 'ca.crt')}`,
        `certfile ${join(this.dir, 'server.crt')}`,
        `keyfile ${join(this.dir, 'server.key')}`,
        'require_certificate true',
        'use_identity_as_username true',
        `acl_file ${join(this.dir, 'acl')}`,
        'log_dest stderr',
        '',
      ].join('\n'),
    );
  }

  async start(): Promise<void> {
    const proc = spawn(MOSQUITTO, ['-c', join(this.dir, 'mosquitto.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.proc = proc;
    // Last resort if the worker dies before afterAll: no broker may outlive the test run.
    const killOnExit = (): void => {
      if (proc.pid !== undefined && proc.exitCode === null) process.kill(proc.pid, 'SIGKILL');
    };
    process.once('exit', killOnExit);
    proc.once('exit', () => process.off('exit', killOnExit));
    proc.stderr?.on('data', (d: Buffer) => {
      this.log = (this.log + d.toString()).slice(-20_000);
    });
    await waitForPort(this.port, proc, () => this.log);
  }

  async stop(): Promise<void> {
    const proc = this.proc;
    this.proc = undefined;
    if (!proc || proc.exitCode !== null || proc.pid === undefined) return;
    const exited = new Promise<void>((r) => proc.once('exit', () => r()));
    process.kill(proc.pid, 'SIGTERM');
    const timer = setTimeout(() => proc.pid !== undefined && proc.exitCode === null && process.kill(proc.pid, 'SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  }
}

// ---- tests ----

let dir: string;
let pki: Pki;
let broker: Mosquitto;
let url: string;
let seq = 0;
const clients: MqttTransport[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'transport-mosquitto-'));
  pki = makePki(dir);
  broker = new Mosquitto(dir, await freePort());
  broker.configure();
  await broker.start();
  url = `mqtts://127.0.0.1:${broker.port}`;
});

afterAll(async () => {
  await broker?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close({ force: true })));
});

function transport(overrides: Partial<MqttTransportOptions> = {}): MqttTransport {
  const t = new MqttTransport({
    url,
    clientId: `test-${process.pid}-${++seq}`,
    tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey },
    connectTimeoutMs: 5000,
    onError: (e) => console.error('unexpected transport error', e),
    ...overrides,
  });
  clients.push(t);
  return t;
}

async function connected(overrides: Partial<MqttTransportOptions> = {}): Promise<MqttTransport> {
  const t = transport(overrides);
  await t.connect();
  return t;
}

function inbox(): { msgs: IncomingMessage[]; handler: (m: IncomingMessage) => void; wait: (n?: number, ms?: number) => Promise<IncomingMessage[]> } {
  const msgs: IncomingMessage[] = [];
  return {
    msgs,
    handler: (m) => {
      msgs.push(m);
    },
    wait: async (n = 1, ms = 5000) => {
      const deadline = Date.now() + ms;
      while (msgs.length < n) {
        if (Date.now() > deadline) throw new Error(`waited for ${n} messages, got ${msgs.length}`);
        await new Promise((r) => setTimeout(r, 5));
      }
      return msgs;
    },
  };
}

const settle = (ms = 100): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('MqttTransport against mosquitto', () => {
  it('connects with a client certificate and round-trips a QoS1 message', async () => {
    const a = await connected();
    const b = await connected();
    expect(a.connected).toBe(true);
    const box = inbox();
    await b.subscribe('t/roundtrip', box.handler, { qos: 1 });
    await a.publish('t/roundtrip', Buffer.from('hello'), { qos: 1 });
    const [msg] = await box.wait();
    expect(msg?.topic).toBe('t/roundtrip');
    expect(msg?.payload.toString()).toBe('hello');
    expect(msg?.retain).toBe(false);
    expect(a.stats().published).toBe(1);
    expect(b.stats().received).toBe(1);
  });

  it('delivers a retained message to a late subscriber, once per handler', async () => {
    const a = await connected();
    const topic = `t/retained/${seq}`;
    await a.publish(topic, Buffer.from('state-1'), { retain: true });
    const late = await connected();
    const first = inbox();
    await late.subscribe(topic, first.handler);
    expect((await first.wait())[0]).toMatchObject({ topic, retain: true });

    // A second handler on the same filter gets the retained state; the first does not see it again.
    const second = inbox();
    await late.subscribe(topic, second.handler);
    expect((await second.wait())[0]?.payload.toString()).toBe('state-1');
    await a.publish(topic, Buffer.from('state-2'), { retain: true });
    await Promise.all([first.wait(2), second.wait(2)]);
    await settle();
    expect(first.msgs.map((m) => [m.payload.toString(), m.retain])).toEqual([
      ['state-1', true],
      ['state-2', false],
    ]);
    expect(second.msgs.map((m) => [m.payload.toString(), m.retain])).toEqual([
      ['state-1', true],
      ['state-2', false],
    ]);
    await a.publish(topic, Buffer.alloc(0), { retain: true });
  });

  it('routes a message matching overlapping subscriptions to each handler exactly once', async () => {
    const a = await connected();
    const wild = inbox();
    const plus = inbox();
    const exact = inbox();
    await a.subscribe('t/overlap/#', wild.handler);
    await a.subscribe('t/overlap/+/x', plus.handler);
    const exactSub = await a.subscribe('t/overlap/1/x', exact.handler);
    await a.publish('t/overlap/1/x', Buffer.from('m1'));
    await Promise.all([wild.wait(), plus.wait(), exact.wait()]);
    await exactSub.unsubscribe();
    await a.publish('t/overlap/1/x', Buffer.from('m2'));
    await Promise.all([wild.wait(2), plus.wait(2)]);
    await settle();
    expect([wild.msgs.length, plus.msgs.length, exact.msgs.length]).toEqual([2, 2, 1]);
  });

  it('rejects a publish the ACL denies with TRANSPORT_PUBLISH_REFUSED (MQTT 5 PUBACK 0x87)', async () => {
    const a = await connected();
    const err = await a.publish('t/denied', Buffer.from('x'), { qos: 1 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TransportError);
    expect(err).toMatchObject({ code: 'TRANSPORT_PUBLISH_REFUSED', details: { reasonCode: 0x87, topic: 't/denied' } });
    await expect(a.publish('elsewhere', Buffer.from('x'))).rejects.toMatchObject({ code: 'TRANSPORT_PUBLISH_REFUSED' });
    expect(a.connected).toBe(true);
    await a.publish('t/allowed', Buffer.from('x'));
  });

  it('drops an oversize incoming message, reports and counts it, and keeps the connection', async () => {
    const errors: TransportError[] = [];
    const rx = await connected({ maxIncomingBytes: 1024, onError: (e) => errors.push(e) });
    const tx = await connected();
    const box = inbox();
    await rx.subscribe('t/big', box.handler);
    await tx.publish('t/big', Buffer.alloc(4096, 1));
    await tx.publish('t/big', Buffer.alloc(1024, 2));
    await box.wait();
    await settle();
    expect(box.msgs.map((m) => m.payload.length)).toEqual([1024]);
    expect(errors.map((e) => e.code)).toEqual(['TRANSPORT_PAYLOAD_TOO_LARGE']);
    expect(errors[0]?.details).toMatchObject({ topic: 't/big', bytes: 4096, limit: 1024 });
    expect(rx.stats()).toMatchObject({ received: 1, dropped: 1 });
    expect(rx.connected).toBe(true);
  });

  it('reports handler failures through onError without losing the connection', async () => {
    const errors: TransportError[] = [];
    const a = await connected({ onError: (e) => errors.push(e) });
    const box = inbox();
    await a.subscribe('t/h', () => {
      throw new Error('sync');
    });
    await a.subscribe('t/h', () => Promise.reject(new Error('async')));
    await a.subscribe('t/h', box.handler);
    await a.publish('t/h', Buffer.from('1'));
    await a.publish('t/h', Buffer.from('2'));
    await box.wait(2);
    await settle(50);
    expect(errors.map((e) => e.code)).toEqual(Array(4).fill('TRANSPORT_HANDLER_FAILED'));
    expect(a.connected).toBe(true);
  });

  it('rejects a server certificate from the wrong CA with TRANSPORT_TLS_FAILED within the timeout', async () => {
    const t = transport({ tls: { ca: pki.otherCa, cert: pki.clientCert, key: pki.clientKey }, connectTimeoutMs: 3000 });
    const started = Date.now();
    const err = await t.connect().catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'TRANSPORT_TLS_FAILED' });
    expect(Date.now() - started).toBeLessThan(3000);
    expect(t.connected).toBe(false);
  });

  it('rejects a connection without a client certificate', async () => {
    const t = transport({ tls: { ca: pki.ca }, connectTimeoutMs: 3000 });
    const started = Date.now();
    const err = await t.connect().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TransportError);
    expect(['TRANSPORT_TLS_FAILED', 'TRANSPORT_CONNECTION_LOST']).toContain((err as TransportError).code);
    expect(Date.now() - started).toBeLessThan(3000);
  });

  it('rejects TRANSPORT_UNREACHABLE when nothing listens', async () => {
    const t = transport({ url: `mqtts://127.0.0.1:${await freePort()}` });
    await expect(t.connect()).rejects.toMatchObject({ code: 'TRANSPORT_UNREACHABLE' });
  });

  it('gives up with TRANSPORT_TIMEOUT when the peer accepts TCP but never answers', async () => {
    const sockets = new Set<Socket>();
    const silent = createServer((s) => sockets.add(s));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const port = (silent.address() as { port: number }).port;
    try {
      const t = transport({ url: `mqtts://127.0.0.1:${port}`, connectTimeoutMs: 300 });
      const started = Date.now();
      await expect(t.connect()).rejects.toMatchObject({ code: 'TRANSPORT_TIMEOUT' });
      expect(Date.now() - started).toBeLessThan(1500);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((r) => silent.close(r));
    }
  });

  it('rejects publish/subscribe when not connected and after close; close is idempotent', async () => {
    const t = transport();
    await expect(t.publish('t/x', Buffer.from('1'))).rejects.toMatchObject({ code: 'TRANSPORT_NOT_CONNECTED' });
    await expect(t.subscribe('t/x', () => {})).rejects.toMatchObject({ code: 'TRANSPORT_NOT_CONNECTED' });
    await t.connect();
    await expect(t.publish('t/+', Buffer.from('1'))).rejects.toMatchObject({ code: 'TRANSPORT_INVALID_TOPIC' });
    const changes: boolean[] = [];
    t.onConnectionChange((c) => changes.push(c));
    await Promise.all([t.close(), t.close()]);
    await t.close({ force: true });
    expect(changes).toEqual([false]);
    await expect(t.publish('t/x', Buffer.from('1'))).rejects.toMatchObject({ code: 'TRANSPORT_CLOSED' });
    await expect(t.connect()).rejects.toMatchObject({ code: 'TRANSPORT_CLOSED' });
  });

  it('rejects a pending connect with TRANSPORT_CLOSED when closed meanwhile', async () => {
    const t = transport();
    const pending = t.connect();
    await t.close();
    await expect(pending).rejects.toMatchObject({ code: 'TRANSPORT_CLOSED' });
    expect(t.connected).toBe(false);
  });

  it('carries a request/response exchange with a retry', async () => {
    const server = await connected();
    const device = await connected();
    let seen = 0;
    await server.subscribe('t/req/+', async ({ topic, payload }) => {
      if (++seen === 1) return;
      await server.publish(`t/res/${topic.split('/')[2]}`, payload);
    });
    const answer = await request(device, {
      requestTopic: 't/req/dev-1',
      payload: Buffer.from('rid-1'),
      responseTopics: ['t/res/dev-1'],
      match: (m) => m.payload.toString() === 'rid-1',
      timeoutMs: 200,
      retries: 2,
    });
    expect(answer.topic).toBe('t/res/dev-1');
    expect(seen).toBe(2);
  });

  it('publishes the last will when the connection is destroyed, not on a clean close', async () => {
    const watcher = await connected();
    const box = inbox();
    await watcher.subscribe('t/will/+', box.handler);
    const polite = await connected({ will: { topic: 't/will/polite', payload: Buffer.from('gone'), qos: 1 } });
    await polite.close();
    const dev = await connected({ will: { topic: 't/will/dev', payload: Buffer.from('offline'), qos: 1 } });
    await dev.close({ force: true });
    const [msg] = await box.wait();
    expect(msg).toMatchObject({ topic: 't/will/dev' });
    expect(msg?.payload.toString()).toBe('offline');
    await settle();
    expect(box.msgs).toHaveLength(1);
  });

  it('reconnects after the broker restarts and re-subscribes', async () => {
    const rx = await connected({ reconnectPeriodMs: 100 });
    const box = inbox();
    await rx.subscribe('t/after-restart', box.handler);
    const changes: boolean[] = [];
    rx.onConnectionChange((c) => changes.push(c));

    await broker.stop();
    await expect.poll(() => rx.connected, { timeout: 5000 }).toBe(false);
    await expect(rx.publish('t/x', Buffer.from('1'))).rejects.toMatchObject({ code: 'TRANSPORT_NOT_CONNECTED' });
    await broker.start();
    await expect.poll(() => rx.connected, { timeout: 10_000 }).toBe(true);
    expect(changes).toEqual([false, true]);

    const tx = await connected();
    // The re-SUBSCRIBE went out before the connection was announced; give mosquitto a moment to process it.
    await settle(50);
    await tx.publish('t/after-restart', Buffer.from('still here'), { qos: 1 });
    const [msg] = await box.wait();
    expect(msg?.payload.toString()).toBe('still here');
  });
});
