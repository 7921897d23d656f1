import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { ManualClock } from '../../common/clock.js';
import { decode } from '../../common/protocol/messages.js';
import { MemoryBroker, MemoryTransport } from '../../common/transport/memory-transport.js';
import type { MqttTransportOptions } from '../../common/transport/mqtt-transport.js';
import type { Transport } from '../../common/transport/transport.js';
import { Agent, type AgentOptions, type TransportPurpose } from './agent.js';
import type { BootstrapConfig } from './config.js';
import { AgentStore } from './store.js';
import { ScriptedBridge } from './testing/scripted-bridge.js';
import { startSwtpm, type TestSwtpm } from './testing/swtpm.js';

/**
 * The agent end to end on a real swtpm and a real LevelDB, against a scripted bridge on a MemoryBroker
 * (real challenge, real certificates). One TPM serves the tests one after another; each test is its own
 * device (own id, data directory, AK and key), so the TPM's three object slots also prove that every
 * run flushes what it loaded.
 */
describe('agent enrollment against a scripted bridge (real swtpm)', () => {
  let dir: string;
  let swtpm: TestSwtpm;
  let broker: MemoryBroker;
  let bridge: ScriptedBridge;
  let clock: ManualClock;
  const running: Agent[] = [];
  let n = 0;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agent-enroll-'));
    clock = new ManualClock(Date.now());
    swtpm = await startSwtpm();
    broker = new MemoryBroker();
    bridge = await ScriptedBridge.start({ broker, dir: join(dir, 'ca'), clock });
  });
  afterAll(async () => {
    for (const a of running) await a.stop();
    await bridge?.stop();
    await swtpm?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  interface Made {
    readonly opts: MqttTransportOptions;
    readonly purpose: TransportPurpose;
  }

  function device(): { bootstrap: BootstrapConfig; dataDir: string } {
    const deviceId = `dev-${++n}`;
    return {
      dataDir: join(dir, deviceId),
      bootstrap: {
        v: 1,
        deviceId,
        tcti: swtpm.tcti,
        baseTopic: 'fleet/v1',
        enrollUrl: 'mqtts://127.0.0.1:1',
        deviceUrl: 'mqtts://127.0.0.1:2',
        trustBundle: bridge.trustBundle,
        token: `token-${deviceId}-0123456789abcdef`,
        tokenExpiresAt: clock.now() + 3_600_000,
      },
    };
  }

  /** Transports on the memory broker; `dieAfter` makes the agent "die" once that message is on the wire. */
  function agent(d: { bootstrap: BootstrapConfig; dataDir: string }, extra: Partial<AgentOptions> & { dieAfter?: string; made?: Made[] } = {}): Agent {
    const { dieAfter, made, ...rest } = extra;
    // `dieAfter`: the agent "dies" (stop() at once, nothing cleaned from its store) the moment that
    // message is on the wire, before any answer can reach it. The SIGKILL version is test/enrollment/agent-kill.test.ts.
    let dead = false;
    const a: Agent = new Agent({
      ...d,
      clock,
      responseTimeoutMs: 2_000,
      transportFactory: (opts, purpose) => {
        made?.push({ opts, purpose });
        const t: Transport = new MemoryTransport(broker, { clientId: opts.clientId, will: opts.will, reconnectPeriodMs: 0 });
        if (dieAfter) {
          const publish = t.publish.bind(t);
          t.publish = async (topic, payload, o) => {
            if (dead) throw new Error('dead');
            await publish(topic, payload, o);
            if (topic.endsWith(`/${dieAfter}`)) {
              dead = true;
              void a.stop();
            }
          };
        }
        return t;
      },
      ...rest,
    });
    running.push(a);
    return a;
  }

  const statusOf = (id: string) => decode('status', broker.retained(`fleet/v1/devices/${id}/status`)!).body;
  const requestIds = (kind: 'enroll' | 'enrollProof', id: string) => bridge.sent(kind, id).map((r) => r.requestId);

  it('enrolls with 2 TPM signatures before connecting, stores the identity, drops the token, goes online over mTLS', async () => {
    const d = device();
    const id = d.bootstrap.deviceId;
    const made: Made[] = [];
    const states: string[] = [];
    const a = agent(d, { made });
    a.onStateChange((s) => states.push(s));
    await a.start();

    const s = a.status();
    expect(s).toMatchObject({ state: 'online', slot: 'A', tpmSignatures: 2, tlsHandshakes: 1 });
    expect(s.enrollment).toEqual({ tpmSignatures: 2, messagesSent: 2, resumed: false });
    expect(s.enrollment!.tpmSignatures).toBeLessThanOrEqual(3);
    expect(states).toEqual(['starting', 'enrolling', 'connecting', 'online']);
    expect(bridge.issued.filter((i) => i.deviceId === id)).toHaveLength(1);
    expect(s.certSerial).toBe(bridge.issued.at(-1)!.serial);

    // Enrollment: server-authenticated only. Device listener: the certificate + chain, the key in the TPM.
    expect(made.map((m) => m.purpose)).toEqual(['enroll', 'device']);
    expect(made[0]!.opts.tls).toEqual({ ca: bridge.trustBundle });
    const tls = made[1]!.opts.tls!;
    expect(tls.privateKeyEngine).toBeTruthy();
    expect(tls.privateKeyIdentifier).toBeTruthy();
    expect(tls.key).toBeUndefined();
    expect(new X509Certificate(String(tls.cert)).serialNumber.toLowerCase()).toBe(s.certSerial);
    // The broker renames the `enr-` client id to the certificate CN; enrollment used a random `enr-…` id.
    expect(made[1]!.opts).toMatchObject({ url: d.bootstrap.deviceUrl, clientId: `enr-${id}`, will: { retain: true, qos: 1 } });
    expect(made[0]!.opts.clientId).toMatch(/^enr-[A-Za-z0-9_-]{22}$/);
    expect(bridge.sent('enroll', id)[0]!.clientId).toBe(made[0]!.opts.clientId);
    expect(decode('status', made[1]!.opts.will!.payload).body).toMatchObject({ online: false, state: 'offline' });
    expect(statusOf(id)).toMatchObject({ deviceId: id, online: true, state: 'online', certSerial: s.certSerial });

    await a.stop();
    expect(a.state).toBe('stopped');
    expect(statusOf(id)).toMatchObject({ online: false, state: 'offline' });

    // What is stored: slot A active, trust bundle, AK; no pending, and the token nowhere.
    const db = new Level<string, string>(join(d.dataDir, 'state'));
    const all = await db.iterator().all();
    await db.close();
    // The outbox sublevel holds what the memory broker did not deliver to anyone: events are not its topic here.
    expect(all.map(([k]) => k).filter((k) => !k.startsWith('!outbox!')).sort()).toEqual(['active', 'ak', 'clockFloor', 'enrolled', 'schema', 'slot:A', 'trustBundle']);
    expect(all.some(([, v]) => v.includes(d.bootstrap.token))).toBe(false);

    // A restarted agent uses what it stored: no enrollment, no TPM signature outside the handshake.
    const again = agent(d);
    await again.start();
    expect(again.status()).toMatchObject({ state: 'online', certSerial: s.certSerial, tpmSignatures: 0, tlsHandshakes: 1 });
    expect(again.status().enrollment).toBeUndefined();
    expect(bridge.sent('enroll', id)).toHaveLength(1);
    await again.stop();
  });

  it('killed right after sending its proof, a restarted agent resends the same proof under the same requestId', async () => {
    const d = device();
    const id = d.bootstrap.deviceId;
    await expect(agent(d, { dieAfter: 'proof' }).start()).rejects.toMatchObject({ code: 'AGENT_STOPPED' });

    const store = new AgentStore(join(d.dataDir, 'state'));
    await store.open();
    const pending = (await store.getPending())!;
    await store.close();
    if (pending.kind !== 'enroll') throw new Error('expected a pending enrollment');
    expect(pending.proof).toBeDefined();

    const revived = agent(d);
    await revived.start();
    expect(revived.status()).toMatchObject({ state: 'online', enrollment: { resumed: true, tpmSignatures: 0 } });
    const proofs = bridge.sent('enrollProof', id);
    // Resent from the same enrollment client id it stored: the bridge answers a repeat to the same requester.
    expect(new Set(proofs.map((p) => p.clientId)).size).toBe(1);
    expect(proofs.map((p) => p.requestId)).toEqual([pending.proof!.requestId, pending.proof!.requestId]);
    expect(proofs[1]!.payload.equals(proofs[0]!.payload)).toBe(true);
    expect(bridge.sent('enroll', id)).toHaveLength(1);
    expect(bridge.issued.filter((i) => i.deviceId === id)).toHaveLength(1);
    expect(revived.status().certSerial).toBe(bridge.issued.at(-1)!.serial);
  });

  it('killed right after sending enroll, a restarted agent resends the same envelope and finishes with the same key', async () => {
    const d = device();
    const id = d.bootstrap.deviceId;
    await expect(agent(d, { dieAfter: 'request' }).start()).rejects.toMatchObject({ code: 'AGENT_STOPPED' });
    const revived = agent(d);
    await revived.start();
    const enrolls = bridge.sent('enroll', id);
    expect(enrolls).toHaveLength(2);
    expect(enrolls[1]!.requestId).toBe(enrolls[0]!.requestId);
    expect(enrolls[1]!.payload.equals(enrolls[0]!.payload)).toBe(true);
    // The CSR was signed before the kill; the revived agent only certifies.
    expect(revived.status().enrollment).toMatchObject({ resumed: true, tpmSignatures: 1 });
    expect(bridge.issued.filter((i) => i.deviceId === id)).toHaveLength(1);
  });

  it('CHALLENGE_UNKNOWN: starts over with a new requestId, the same key, CSR and token, and succeeds', async () => {
    const d = device();
    const id = d.bootstrap.deviceId;
    bridge.rejectNext('enrollProof', 'CHALLENGE_UNKNOWN');
    const a = agent(d);
    await a.start();
    expect(a.state).toBe('online');
    const enrolls = bridge.sent('enroll', id).map((r) => decode('enroll', r.payload));
    expect(enrolls).toHaveLength(2);
    expect(enrolls[1]!.requestId).not.toBe(enrolls[0]!.requestId);
    for (const field of ['keyPublic', 'csr', 'akPublic', 'ekPublic'] as const) {
      expect(enrolls[1]!.body[field].equals(enrolls[0]!.body[field])).toBe(true);
    }
    expect(enrolls[1]!.body.token).toBe(d.bootstrap.token);
    expect(new Set(requestIds('enrollProof', id)).size).toBe(2);
    // CSR once, certify per challenge.
    expect(a.status().enrollment).toMatchObject({ tpmSignatures: 3, messagesSent: 4 });
    await a.stop();
  });

  it('a non-retryable rejection ends in state error with AGENT_ENROLLMENT_REJECTED and the code', async () => {
    const d = device();
    bridge.rejectNext('enroll', 'TOKEN_USED');
    const a = agent(d);
    await expect(a.start()).rejects.toMatchObject({ code: 'AGENT_ENROLLMENT_REJECTED', rejection: 'TOKEN_USED' });
    expect(a.state).toBe('error');
    expect(a.status().error).toMatchObject({ code: 'AGENT_ENROLLMENT_REJECTED', rejection: 'TOKEN_USED' });
    expect(bridge.sent('enroll', d.bootstrap.deviceId)).toHaveLength(1);
    await a.stop();
    expect(a.state).toBe('stopped');
  });

  it('RATE_LIMITED: waits retryAfterSec on the injected timer, then resends the same request', async () => {
    const d = device();
    const id = d.bootstrap.deviceId;
    bridge.rejectNext('enroll', 'RATE_LIMITED', { retryAfterSec: 30 });
    bridge.rejectNext('enrollProof', 'UNAVAILABLE');
    const waits: number[] = [];
    const a = agent(d, {
      random: () => 0.5,
      sleep: async (ms) => {
        waits.push(ms);
        clock.advance(ms);
      },
    });
    const t0 = Date.now();
    await a.start();
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(a.state).toBe('online');
    // retryAfterSec when given; otherwise backoff with full jitter (base 1 s: 500 ms at 0.5).
    expect(waits).toEqual([30_000, 500]);
    const enrolls = requestIds('enroll', id);
    expect(enrolls).toHaveLength(2);
    expect(enrolls[1]).toBe(enrolls[0]);
    const proofs = requestIds('enrollProof', id);
    expect(proofs).toHaveLength(2);
    expect(proofs[1]).toBe(proofs[0]);
    await a.stop();
  });

  it('a lost message is republished after the response timeout', async () => {
    const d = device();
    bridge.dropNext('enroll');
    const a = agent(d, { responseTimeoutMs: 150 });
    await a.start();
    const enrolls = bridge.sent('enroll', d.bootstrap.deviceId);
    expect(enrolls).toHaveLength(2);
    expect(enrolls[1]!.payload.equals(enrolls[0]!.payload)).toBe(true);
    await a.stop();
  });

  it('after a dropped connection the will marks it offline; back online it republishes its status', async () => {
    const d = device();
    const id = d.bootstrap.deviceId;
    let deviceTransport: MemoryTransport | undefined;
    const a = agent(d, {
      transportFactory: (opts, purpose) => {
        const t = new MemoryTransport(broker, { clientId: opts.clientId, will: opts.will, reconnectPeriodMs: purpose === 'device' ? 5 : 0 });
        if (purpose === 'device') deviceTransport = t;
        return t;
      },
    });
    await a.start();
    const states: string[] = [];
    a.onStateChange((s) => states.push(s));
    deviceTransport!.simulateDrop();
    expect(statusOf(id)).toMatchObject({ online: false, state: 'offline' });
    await vi.waitFor(() => expect(a.state).toBe('online'));
    expect(states).toEqual(['connecting', 'online']);
    expect(statusOf(id)).toMatchObject({ online: true, state: 'online', certSerial: a.status().certSerial });
    expect(a.status().tlsHandshakes).toBe(2);
    await a.stop();
  });

  it('stop() during a retry wait ends the start with state stopped', async () => {
    const d = device();
    bridge.rejectNext('enroll', 'RATE_LIMITED', { retryAfterSec: 3600 });
    const a = agent(d); // real timers: it would wait an hour
    const started = a.start();
    await vi.waitFor(() => expect(bridge.sent('enroll', d.bootstrap.deviceId)).toHaveLength(1));
    await new Promise((r) => setTimeout(r, 20)); // the rejection arrives and the wait begins
    await a.stop();
    await expect(started).rejects.toMatchObject({ code: 'AGENT_STOPPED' });
    expect(a.state).toBe('stopped');
  });
});
