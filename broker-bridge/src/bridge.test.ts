import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { webcrypto } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import mqtt from 'mqtt';
import { ManualClock, systemClock } from '../../common/clock.js';
import { CodedError } from '../../common/coded-error.js';
import { encode } from '../../common/protocol/messages.js';
import { Topics } from '../../common/protocol/topics.js';
import { MemoryBroker, MemoryTransport } from '../../common/transport/memory-transport.js';
import { MqttTransport } from '../../common/transport/mqtt-transport.js';
import { topicMatches } from '../../common/transport/topic-match.js';
import { BRIDGE_SESSION, Bridge, DEFAULT_BRIDGE_CLIENT_ID, type BridgeLogger, type RequestHandler } from './bridge.js';
import { EmbeddedBroker } from './broker/embedded-broker.js';
import { issueServiceCertificate } from './broker/service-cert.js';
import { DEFAULT_AUDITOR, EmbeddedFleet } from './embedded-fleet.js';

const topics = new Topics('fleet/v1');
const BUNDLE = topics.fleet('trustBundle');
/** Stands in for a signed trust bundle message (TrustBundleSigner is tested on its own). */
const SIGNED = Buffer.from('{"v":1,"version":1,"signed":"stand-in"}');
const bundle = async (): Promise<Buffer> => SIGNED;

interface Line {
  level: 'info' | 'warn' | 'error';
  obj: Record<string, unknown>;
  msg: string;
}
function recorder(): { lines: Line[]; logger: BridgeLogger } {
  const lines: Line[] = [];
  const at = (level: Line['level']) => (obj: object, msg: string) => void lines.push({ level, obj: obj as Record<string, unknown>, msg });
  return { lines, logger: { info: at('info'), warn: at('warn'), error: at('error') } };
}

/** A handler that records what reaches it and answers on the topic `answer` names, if any. */
function recording(filters: string[], answer?: (topic: string) => string | undefined): RequestHandler & { seen: string[] } {
  const seen: string[] = [];
  return {
    seen,
    filters: () => filters,
    handle: async (topic, payload) => {
      seen.push(`${topic} ${payload.toString()}`);
      const to = answer?.(topic);
      return to ? { topic: to, payload: Buffer.from(`re:${payload.toString()}`) } : undefined;
    },
  };
}

/** A throwaway fleet root for the broker's and clients' certificates. */
async function testRoot(): Promise<{ rootCertPem: string; rootKeyPem: string }> {
  x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const root = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: 'CN=Bridge Test Root',
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    keys,
    signingAlgorithm: alg,
    extensions: [new x509.BasicConstraintsExtension(true, 1, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  return { rootCertPem: root.toString('pem'), rootKeyPem: `-----BEGIN PRIVATE KEY-----\n${pkcs8.toString('base64')}\n-----END PRIVATE KEY-----\n` };
}

const turn = () => new Promise((r) => setImmediate(r));
async function until(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('Bridge (in-process broker)', () => {
  const open: Array<{ close(): Promise<void> }> = [];
  afterEach(async () => {
    for (const c of open.splice(0).reverse()) await c.close();
  });
  const client = async (broker: MemoryBroker, clientId: string) => {
    const t = new MemoryTransport(broker, { clientId, onError: () => {}, reconnectPeriodMs: 2 });
    open.push(t);
    await t.connect();
    return t;
  };

  it('routes each message to the handler whose filter matches and publishes its reply', async () => {
    const broker = new MemoryBroker();
    const enroll = recording([topics.allDevices('events')], () => topics.device('dev-a', 'rotateConfirmed'));
    const rotate = recording([topics.allDevices('rotateBegin'), topics.allDevices('rotateRequest')], (t) =>
      t.endsWith('/rotate/begin') ? topics.device('dev-a', 'rotateChallenge') : undefined,
    );
    const transport = new MemoryTransport(broker, { clientId: DEFAULT_BRIDGE_CLIENT_ID, onError: () => {} });
    const bridge = new Bridge({ transport, topics, handlers: [enroll, rotate], trustBundle: bundle });
    open.push({ close: () => bridge.stop() });
    await bridge.start();
    const dev = await client(broker, 'dev-a');
    const answers: string[] = [];
    await dev.subscribe(`${topics.base}/devices/dev-a/#`, (m) => void answers.push(`${m.topic} ${m.payload.toString()}`));
    await dev.publish(topics.device('dev-a', 'events'), Buffer.from('1'));
    await dev.publish(topics.device('dev-a', 'rotateBegin'), Buffer.from('2'));
    await dev.publish(topics.device('dev-a', 'rotateRequest'), Buffer.from('3'));
    await until(() => answers.length >= 5, 'answers'); // 3 own requests echo back on the wildcard + 2 replies
    expect(enroll.seen).toEqual([`${topics.device('dev-a', 'events')} 1`]);
    expect(rotate.seen).toEqual([`${topics.device('dev-a', 'rotateBegin')} 2`, `${topics.device('dev-a', 'rotateRequest')} 3`]);
    expect(answers).toContain(`${topics.device('dev-a', 'rotateConfirmed')} re:1`);
    expect(answers).toContain(`${topics.device('dev-a', 'rotateChallenge')} re:2`);
    expect(broker.retained(BUNDLE)).toEqual(SIGNED);
  });

  it('refuses two handlers on one filter', () => {
    const a = recording([topics.allDevices('events')]);
    expect(() => new Bridge({ transport: new MemoryTransport(new MemoryBroker(), { clientId: 'b' }), topics, handlers: [a, a], trustBundle: bundle })).toThrow(
      expect.objectContaining({ code: 'BRIDGE_CONFIG_INVALID' }),
    );
  });

  it('logs one line when the connection goes down, one when it is back with the outage length, and republishes the trust bundle', async () => {
    const broker = new MemoryBroker();
    const clock = new ManualClock(1_000_000);
    const log = recorder();
    const transport = new MemoryTransport(broker, { clientId: DEFAULT_BRIDGE_CLIENT_ID, onError: () => {}, reconnectPeriodMs: 2 });
    const bridge = new Bridge({ transport, topics, handlers: [], trustBundle: bundle, logger: log.logger, clock });
    open.push({ close: () => bridge.stop() });
    await bridge.start();
    expect(log.lines).toEqual([]);

    // A broker that lost its retained messages: the bundle is gone until the bridge is back.
    const admin = await client(broker, 'admin');
    await admin.publish(BUNDLE, Buffer.alloc(0), { retain: true });
    expect(broker.retained(BUNDLE)).toBeUndefined();
    broker.stop();
    clock.advance(4_500);
    await new Promise((r) => setTimeout(r, 20)); // several reconnect attempts fail meanwhile
    broker.start();
    await until(() => broker.retained(BUNDLE) !== undefined, 'the republished bundle');
    expect(log.lines.map((l) => [l.level, l.msg, l.obj])).toEqual([
      ['warn', 'bridge lost its broker connection', {}],
      ['info', 'bridge reconnected to the broker', { outageMs: 4_500 }],
    ]);
  });

  it('a trust bundle publish that fails is logged once, never thrown, and retried on the next reconnect', async () => {
    const broker = new MemoryBroker();
    const log = recorder();
    const transport = new MemoryTransport(broker, { clientId: DEFAULT_BRIDGE_CLIENT_ID, onError: () => {}, reconnectPeriodMs: 2 });
    // Refused by the broker (a misconfigured ACL): start() still completes.
    broker.setAcl((_c, action, topic) => !(action === 'publish' && topic === BUNDLE));
    const bridge = new Bridge({ transport, topics, handlers: [], trustBundle: bundle, logger: log.logger });
    open.push({ close: () => bridge.stop() });
    await bridge.start();
    expect(log.lines.map((l) => [l.level, l.obj['code']])).toEqual([['warn', 'TRANSPORT_PUBLISH_REFUSED']]);

    // The connection drops again right after the next CONNACK, before the publish reaches the broker.
    broker.setAcl(undefined);
    let dropOnce = true;
    transport.onConnectionChange((up) => {
      if (up && dropOnce) {
        dropOnce = false;
        broker.stop();
        setTimeout(() => broker.start(), 10);
      }
    });
    transport.simulateDrop();
    await until(() => broker.retained(BUNDLE) !== undefined, 'the bundle after two reconnects');
    const bundleLines = log.lines.filter((l) => l.msg.includes('trust bundle'));
    // One warning for the refusal streak (the NOT_CONNECTED failure continues it), one line when it worked.
    expect(bundleLines.map((l) => [l.level, l.msg])).toEqual([
      ['warn', 'could not publish the trust bundle; retrying on the next reconnect'],
      ['info', 'trust bundle published'],
    ]);
    expect(log.lines.filter((l) => l.level === 'error')).toEqual([]);
  });

  it('needs the trustBundle source', () => {
    const transport = new MemoryTransport(new MemoryBroker(), { clientId: 'b' });
    expect(() => new Bridge({ transport, topics, handlers: [] } as unknown as ConstructorParameters<typeof Bridge>[0])).toThrow(
      expect.objectContaining({ code: 'BRIDGE_CONFIG_INVALID' }),
    );
  });

  it('asks trustBundle for the message on start and on every reconnect; a failing source is logged once with its code and asked again', async () => {
    const broker = new MemoryBroker();
    const log = recorder();
    const transport = new MemoryTransport(broker, { clientId: DEFAULT_BRIDGE_CLIENT_ID, onError: () => {}, reconnectPeriodMs: 2 });
    let calls = 0;
    let failing = true;
    const source = async (): Promise<Buffer> => {
      calls++;
      if (failing) throw new CodedError('TRUST_BUNDLE_STATE_WRITE_FAILED', 'cannot write the state');
      return SIGNED;
    };
    const bridge = new Bridge({ transport, topics, handlers: [], trustBundle: source, logger: log.logger });
    open.push({ close: () => bridge.stop() });
    await bridge.start(); // a failing source never fails the start
    expect(calls).toBe(1);
    expect(broker.retained(BUNDLE)).toBeUndefined();
    transport.simulateDrop();
    await until(() => calls === 2, 'the second call');
    await turn();
    expect(log.lines.filter((l) => l.msg.includes('trust bundle')).map((l) => [l.level, l.obj['code']])).toEqual([['warn', 'TRUST_BUNDLE_STATE_WRITE_FAILED']]);
    failing = false;
    transport.simulateDrop();
    await until(() => broker.retained(BUNDLE) !== undefined, 'the bundle');
    expect(broker.retained(BUNDLE)).toEqual(SIGNED);
    expect(log.lines.filter((l) => l.msg.includes('trust bundle')).map((l) => l.msg)).toEqual([
      'could not publish the trust bundle; retrying on the next reconnect',
      'trust bundle published',
    ]);
  });

  it('waits out an unreachable broker at start', async () => {
    const broker = new MemoryBroker();
    broker.stop();
    const log = recorder();
    const transport = new MemoryTransport(broker, { clientId: DEFAULT_BRIDGE_CLIENT_ID, onError: () => {} });
    const bridge = new Bridge({ transport, topics, handlers: [], trustBundle: bundle, logger: log.logger, connectRetryMs: 5 });
    open.push({ close: () => bridge.stop() });
    const started = bridge.start();
    await new Promise((r) => setTimeout(r, 30));
    broker.start();
    await started;
    expect(broker.retained(BUNDLE)).toBeDefined();
    expect(log.lines.map((l) => [l.level, l.msg, l.obj['code']])).toEqual([
      ['warn', 'broker not reachable; bridge keeps trying', 'TRANSPORT_UNREACHABLE'],
      ['info', 'bridge connected to the broker', undefined],
    ]);
  });

  it('stop() during the wait for the broker rejects start() with BRIDGE_STOPPED', async () => {
    const broker = new MemoryBroker();
    broker.stop();
    const bridge = new Bridge({ transport: new MemoryTransport(broker, { clientId: 'b', onError: () => {} }), topics, handlers: [], trustBundle: bundle, connectRetryMs: 5 });
    const outcome = bridge.start().then(
      () => 'started',
      (e: unknown) => e,
    );
    await turn();
    await bridge.stop();
    expect(await outcome).toMatchObject({ code: 'BRIDGE_STOPPED' });
  });

  it('a handler that throws is logged and the bridge keeps going', async () => {
    const broker = new MemoryBroker();
    const log = recorder();
    let n = 0;
    const flaky: RequestHandler = {
      filters: () => [topics.allDevices('events')],
      handle: async () => {
        if (n++ === 0) throw new Error('boom');
        return undefined;
      },
    };
    const bridge = new Bridge({ transport: new MemoryTransport(broker, { clientId: 'b', onError: () => {} }), topics, handlers: [flaky], trustBundle: bundle, logger: log.logger });
    open.push({ close: () => bridge.stop() });
    await bridge.start();
    const dev = await client(broker, 'dev-a');
    await dev.publish(topics.device('dev-a', 'events'), Buffer.from('1'));
    await dev.publish(topics.device('dev-a', 'events'), Buffer.from('2'));
    await until(() => n === 2, 'both messages');
    expect(log.lines.map((l) => [l.level, l.msg])).toEqual([['error', 'handler failed on a device message']]);
  });
});

/**
 * The bridge's persistent session on a real mosquitto with the generated config: messages devices
 * publish while the bridge is away, or while the broker restarts, reach it when it is back, once, in
 * order; the trust bundle is retained again after any broker restart.
 */
describe('Bridge persistent session (real mosquitto)', () => {
  let dir: string;
  let broker: EmbeddedBroker;
  let pki: Awaited<ReturnType<typeof testRoot>>;
  let bridgeTls: { certPem: string; keyPem: string };
  let devTls: { certPem: string; keyPem: string };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'bridge-test-'));
    pki = await testRoot();
    const server = await issueServiceCertificate({ ...pki, commonName: 'broker', usage: 'server', hosts: ['127.0.0.1'], clock: systemClock });
    [bridgeTls, devTls] = await Promise.all([
      issueServiceCertificate({ ...pki, commonName: 'role:bridge', usage: 'client', clock: systemClock }),
      issueServiceCertificate({ ...pki, commonName: 'dev-a', usage: 'client', clock: systemClock }),
    ]);
    broker = await EmbeddedBroker.start({ dir, baseTopic: 'fleet/v1', serverCertPem: server.certPem, serverKeyPem: server.keyPem, clientCaPem: pki.rootCertPem });
  });
  afterAll(async () => {
    await broker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  let lastTransport: MqttTransport | undefined;
  const makeBridge = (handler: RequestHandler, log?: BridgeLogger) => {
    const transport = new MqttTransport({
      url: broker.deviceUrl,
      clientId: DEFAULT_BRIDGE_CLIENT_ID,
      ...BRIDGE_SESSION,
      reconnectPeriodMs: 50,
      tls: { ca: pki.rootCertPem, cert: bridgeTls.certPem, key: bridgeTls.keyPem },
      onError: () => {},
    });
    lastTransport = transport;
    return new Bridge({ transport, topics, handlers: [handler], trustBundle: bundle, ...(log ? { logger: log } : {}), connectRetryMs: 50 });
  };
  const device = () =>
    mqtt.connectAsync(broker.deviceUrl, { ca: pki.rootCertPem, cert: devTls.certPem, key: devTls.keyPem, clientId: 'enr-dev-a', protocolVersion: 5, reconnectPeriod: 0 });
  const retainedBundle = async (): Promise<string | undefined> => {
    const c = await mqtt.connectAsync(broker.deviceUrl, { ca: pki.rootCertPem, cert: devTls.certPem, key: devTls.keyPem, clientId: 'enr-dev-a-reader', protocolVersion: 5, reconnectPeriod: 0 });
    try {
      const got = new Promise<string>((resolve) => c.on('message', (_t, p) => resolve(p.toString())));
      await c.subscribeAsync(BUNDLE, { qos: 1 });
      return await Promise.race([got, new Promise<undefined>((r) => setTimeout(() => r(undefined), 500))]);
    } finally {
      await c.endAsync();
    }
  };

  it('gets the events published while it was away, across a broker restart, once each and in order', async () => {
    const events = topics.allDevices('events');
    const first = recording([events]);
    const bridge1 = makeBridge(first);
    await bridge1.start();
    await bridge1.stop();

    const dev = await device();
    for (let i = 1; i <= 300; i++) await dev.publishAsync(topics.device('dev-a', 'events'), String(i), { qos: 1 });
    await dev.endAsync();
    await broker.restart(); // saves and reloads the queue with the session

    const second = recording([events]);
    const bridge2 = makeBridge(second);
    await bridge2.start();
    try {
      await until(() => second.seen.length >= 300, '300 queued events');
      await new Promise((r) => setTimeout(r, 100));
      expect(second.seen).toEqual(Array.from({ length: 300 }, (_, i) => `${topics.device('dev-a', 'events')} ${i + 1}`));
      expect(first.seen).toEqual([]);
    } finally {
      await bridge2.stop();
    }
  });

  it('survives broker restarts and a SIGKILL while running: reconnects, logs each outage, republishes the trust bundle', async () => {
    const log = recorder();
    const seen = recording([topics.allDevices('events')]);
    const bridge = makeBridge(seen, log.logger);
    await bridge.start();
    try {
      expect(await retainedBundle()).toBe(SIGNED.toString());

      // The retained bundle is deleted, then the broker restarts: only the bridge can bring it back.
      // (Deleted through the bridge's own session: a second client with the bridge's certificate would
      // take that session over, since the broker names mutual-TLS sessions by CN.)
      await lastTransport!.publish(BUNDLE, Buffer.alloc(0), { qos: 1, retain: true });
      expect(await retainedBundle()).toBeUndefined();
      await broker.restart();
      await until(() => log.lines.some((l) => l.msg === 'bridge reconnected to the broker'), 'the reconnect');
      await until(() => log.lines.length >= 2, 'log lines');
      expect(await retainedBundle()).toBe(SIGNED.toString());

      // Down for a while (the bridge retries every 50 ms), killed without a final save, back again.
      await broker.kill();
      await new Promise((r) => setTimeout(r, 400));
      await broker.startAgain();
      await until(() => log.lines.filter((l) => l.msg === 'bridge reconnected to the broker').length === 2, 'the second reconnect');

      // Still subscribed: a device event reaches it.
      const dev = await device();
      await dev.publishAsync(topics.device('dev-a', 'events'), 'after', { qos: 1 });
      await dev.endAsync();
      await until(() => seen.seen.length === 1, 'the event after the restarts');

      const outage = log.lines.map((l) => [l.level, l.msg]);
      expect(outage).toEqual([
        ['warn', 'bridge lost its broker connection'],
        ['info', 'bridge reconnected to the broker'],
        ['warn', 'bridge lost its broker connection'],
        ['info', 'bridge reconnected to the broker'],
      ]);
      expect(log.lines[3]!.obj['outageMs']).toBeGreaterThanOrEqual(400);
    } finally {
      await bridge.stop();
    }
  });

  it('routes by topic, so messages queued under an older subscription layout still arrive', async () => {
    // An older bridge subscribed its filters in another order (other subscription identifiers).
    const statusF = topics.allDevices('status');
    const eventsF = topics.allDevices('events');
    const old = makeBridge({ filters: () => [statusF, eventsF], handle: async () => undefined });
    await old.start();
    await old.stop();
    const dev = await device();
    await dev.publishAsync(topics.device('dev-a', 'events'), 'queued', { qos: 1 });
    await dev.endAsync();
    const events = recording([eventsF]);
    const status = recording([statusF]);
    // (The old layout gave status identifier 1 and events 2; this one gives events 1 and status 2.)
    const transport = new MqttTransport({
      url: broker.deviceUrl,
      clientId: DEFAULT_BRIDGE_CLIENT_ID,
      ...BRIDGE_SESSION,
      tls: { ca: pki.rootCertPem, cert: bridgeTls.certPem, key: bridgeTls.keyPem },
      onError: () => {},
    });
    const bridge = new Bridge({ transport, topics, handlers: [events, status], trustBundle: bundle });
    await bridge.start();
    try {
      await until(() => events.seen.length === 1, 'the queued event');
      expect(events.seen[0]).toBe(`${topics.device('dev-a', 'events')} queued`);
      expect(status.seen.filter((s) => !topicMatches(statusF, s.split(' ')[0]!))).toEqual([]);
    } finally {
      await bridge.stop();
    }
  });
});

/**
 * The whole fleet side wired as the demo and the integration suites run it: status and events a device
 * publishes reach the inventory through bridge outages and broker restarts, and the trust bundle is
 * retained again after each restart.
 */
describe('EmbeddedFleet wiring (real mosquitto)', () => {
  let dir: string;
  let fleet: EmbeddedFleet;
  let devTls: { certPem: string; keyPem: string };
  const log = recorder();

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fleet-wiring-'));
    fleet = await EmbeddedFleet.start({ dir, clock: systemClock, trustDomain: 'test.fleet', ekTrust: { roots: [] }, logger: log.logger, bridgeReconnectMs: 50 });
    await fleet.inventory.registerDevice({ deviceId: 'dev-a', ekPublicHash: 'ab'.repeat(32), ekCertificate: 'AAAA', ekKind: 'ecc', metadata: {}, registeredAt: Date.now() });
    // From the issuing CA, as every fleet client certificate: with crlfile set the broker refuses others.
    devTls = await fleet.clientCertificate('dev-a');
  });
  afterAll(async () => {
    await fleet?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const device = (clientId = 'enr-dev-a') =>
    mqtt.connectAsync(fleet.broker.deviceUrl, { ca: fleet.trustBundle, cert: devTls.certPem, key: devTls.keyPem, clientId, protocolVersion: 5, reconnectPeriod: 0 });
  const publishEvents = async (from: number, to: number) => {
    const dev = await device();
    for (let seq = from; seq <= to; seq++) {
      await dev.publishAsync(fleet.topics.device('dev-a', 'events'), encode('events', `evt-${seq}-xxxxxx`, Date.now(), { type: 'clock_skew', at: seq, seq, skewMs: -seq }), { qos: 1 });
    }
    await dev.endAsync();
  };
  const seqs = async () => (await fleet.inventory.listDeviceEvents('dev-a')).map((e) => e.seq);
  const retained = async (topic: string): Promise<string | undefined> => {
    // A read-only auditor: a second dev-a connection would take the device's session over (named by CN).
    const auditor = await fleet.clientCertificate(DEFAULT_AUDITOR);
    const c = await mqtt.connectAsync(fleet.broker.deviceUrl, { ca: fleet.trustBundle, cert: auditor.certPem, key: auditor.keyPem, clientId: `enr-reader-${Date.now()}`, protocolVersion: 5, reconnectPeriod: 0 });
    try {
      const got = new Promise<string>((resolve) => c.on('message', (_t, p) => resolve(p.toString())));
      await c.subscribeAsync(topic, { qos: 1 });
      return await Promise.race([got, new Promise<undefined>((r) => setTimeout(() => r(undefined), 500))]);
    } finally {
      await c.endAsync();
    }
  };
  const waitFor = async (cond: () => Promise<boolean>, what: string) => {
    const deadline = Date.now() + 10_000;
    while (!(await cond())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  it('ingests status and events, through a bridge outage and broker restarts, in order and once', async () => {
    const dev = await device();
    await dev.publishAsync(
      fleet.topics.device('dev-a', 'status'),
      encode('status', 'status-req-0001', Date.now(), { deviceId: 'dev-a', online: true, state: 'online', certSerial: '4a01' }),
      { qos: 1, retain: true },
    );
    await dev.endAsync();
    await publishEvents(1, 3);
    await waitFor(async () => (await seqs()).length === 3, 'the first events');
    expect(fleet.inventory.getDevice('dev-a')).toMatchObject({ online: true, status: { state: 'online', certSerial: '4a01' } });

    // Bridge away: the broker queues for its session, and keeps the queue over a restart.
    await fleet.stopBridge();
    await publishEvents(4, 8);
    await fleet.restartBroker();
    await fleet.startBridge();
    await waitFor(async () => (await seqs()).length === 8, 'the queued events');

    // Broker away while the bridge runs; the device resends event 8 (its PUBACK was lost, say).
    await fleet.stopBroker();
    await new Promise((r) => setTimeout(r, 300));
    await fleet.startBroker();
    await waitFor(async () => log.lines.some((l) => l.msg === 'bridge reconnected to the broker'), 'the bridge to reconnect');
    await publishEvents(8, 9);
    await waitFor(async () => (await seqs()).length === 9, 'the event after the restart');
    expect(await seqs()).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);

    // The signed message's own checks are in test/revocation/trust-bundle.test.ts.
    expect(JSON.parse((await retained(fleet.topics.fleet('trustBundle')))!)).toMatchObject({ v: 1, roots: fleet.trustBundle });
    expect(JSON.parse((await retained(fleet.topics.device('dev-a', 'status')))!).body).toMatchObject({ state: 'online', certSerial: '4a01' });
    expect(log.lines.filter((l) => l.level !== 'info').map((l) => l.msg)).toEqual(['bridge lost its broker connection']);
  });
});
