import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MqttTransport } from '../../common/transport/mqtt-transport.js';
import type { Transport } from '../../common/transport/transport.js';
import type { Agent } from '../../agent/src/agent.js';
import { eventually, recordingLogger, startFleetFixture, type FleetFixture } from './fleet-fixture.js';

/**
 * The agent never gives up on the network: a bridge away for a minute at first start, a broker that is
 * not there yet, and mosquitto restarted at every enrollment step and in the middle of a rotation. Real
 * swtpm, mosquitto, bridge; real outages (the broker process is stopped and started again).
 */
describe('the agent outlives outages (real swtpm, mosquitto, bridge)', () => {
  let fx: FleetFixture;

  beforeAll(async () => {
    fx = await startFleetFixture();
  });
  afterAll(async () => {
    await fx?.stop();
  });

  it('enrolls after the broker comes up, when it was unreachable at start (ECONNREFUSED)', async () => {
    const d = await fx.device('out-nobroker');
    const log = recordingLogger();
    await fx.fleet.stopBroker();
    const a = fx.agent(d, { logger: log });
    const started = a.start();
    await eventually(() => log.lines.some((l) => l.msg === 'cannot reach the fleet yet; retrying'), 10_000, 'the first failed connect');
    await new Promise((r) => setTimeout(r, 2_000));
    expect(a.state).toBe('enrolling');
    await fx.fleet.startBroker();
    await started;
    expect(a.state).toBe('online');
    // One line when it could not connect, one when it could; not one per retry.
    expect(log.lines.filter((l) => l.msg === 'cannot reach the fleet yet; retrying')).toHaveLength(1);
  });

  it('mosquitto restarted at each enrollment step, just after going online, and during a rotation: every device ends online', { timeout: 150_000 }, async () => {
    // Topic suffixes: enrollment request and proof (under the attempt's client id), the status, a rotation request.
    const steps = ['request', 'proof', 'status', 'rotate/request'] as const;
    const agents: Agent[] = [];
    for (const step of steps) {
      const d = await fx.device(`out-restart-${steps.indexOf(step)}`);
      let fired = false;
      let restarted: Promise<void> | undefined;
      const a = fx.agent(d, {
        transportFactory: (opts) => {
          const t: Transport = new MqttTransport(opts);
          const publish = t.publish.bind(t);
          t.publish = async (topic, payload, o) => {
            await publish(topic, payload, o);
            if (!fired && topic.endsWith(`/${step}`)) {
              fired = true;
              restarted = fx.fleet.restartBroker();
            }
          };
          return t;
        },
      });
      agents.push(a);
      await a.start();
      if (step === 'rotate/request') {
        a.rotateNow();
        await eventually(() => fired, 10_000, 'the rotation request');
      }
      await restarted;
      expect(fired).toBe(true);
      if (step === 'rotate/request') await eventually(() => a.status().rotations === 1, 30_000, 'rotation across the restart');
      await eventually(() => a.state === 'online' && a.status().online, 30_000, `${step}: online again`);
      const id = d.bootstrap.deviceId;
      // Exactly one active certificate: the restart never made the fleet issue a second identity.
      const active = fx.fleet.inventory.listCertificates(id).filter((c) => c.supersededAt === undefined && c.revokedAt === undefined);
      expect(active.map((c) => c.serial)).toEqual([a.status().certSerial]);
    }
    // All of them still online after the last restart, with their status retained and ingested again.
    for (const a of agents) {
      await eventually(() => a.state === 'online', 30_000, `${a.deviceId} online`);
      await eventually(() => fx.fleet.inventory.getDevice(a.deviceId)?.status?.online === true, 10_000, `${a.deviceId} status ingested`);
    }
  });

  it('logs one line when the connection goes down and one when it is back, with the outage length', async () => {
    const d = await fx.device('out-logs');
    const log = recordingLogger();
    const a = fx.agent(d, { logger: log });
    await a.start();
    await fx.fleet.stopBroker();
    await eventually(() => a.state === 'connecting', 10_000, 'offline');
    await new Promise((r) => setTimeout(r, 1_500)); // several reconnect attempts meanwhile
    await fx.fleet.startBroker();
    await eventually(() => a.state === 'online', 30_000, 'online again');
    const device = log.lines.filter((l) => l.fields['link'] === 'device');
    expect(device.filter((l) => l.msg === 'connection to the fleet lost; reconnecting')).toHaveLength(1);
    const restored = device.filter((l) => l.msg === 'connection to the fleet restored');
    expect(restored).toHaveLength(1);
    expect(restored[0]!.fields['outageMs']).toBeGreaterThanOrEqual(1_500);
    expect(log.lines.filter((l) => l.level === 'error')).toEqual([]);
  });

  it('the bridge down for 60 s: a device at its first start and one with its proof in flight both enroll when it returns', async () => {
    // Device B is between challenge and proof when the bridge goes away: its proof is published while
    // the bridge is down (the broker queues it for the bridge's persistent session).
    const dB = await fx.device('out-midproof');
    let fired = false;
    const b = fx.agent(dB, {
      responseTimeoutMs: 5_000,
      transportFactory: (opts) => {
        const t: Transport = new MqttTransport(opts);
        const publish = t.publish.bind(t);
        t.publish = async (topic, payload, o) => {
          if (!fired && topic.endsWith('/proof')) {
            fired = true;
            await fx.fleet.stopBridge();
          }
          await publish(topic, payload, o);
        };
        return t;
      },
    });
    const bStarted = b.start();
    await eventually(() => fired, 20_000, 'B sends its proof');
    // Device A starts for the first time while the bridge is away.
    const dA = await fx.device('out-nobridge');
    const a = fx.agent(dA, { responseTimeoutMs: 5_000 });
    const aStarted = a.start();
    const settled = { a: false, b: false };
    void aStarted.then(() => (settled.a = true)).catch(() => undefined);
    void bStarted.then(() => (settled.b = true)).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 60_000));
    expect(settled).toEqual({ a: false, b: false });
    expect([a.state, b.state]).toEqual(['enrolling', 'enrolling']);
    await fx.fleet.startBridge();
    await Promise.all([aStarted, bStarted]);
    for (const [agent, d] of [[a, dA], [b, dB]] as const) {
      expect(agent.state).toBe('online');
      const id = d.bootstrap.deviceId;
      expect(fx.fleet.inventory.listCertificates(id).map((c) => c.serial)).toEqual([agent.status().certSerial]);
      expect(await fx.fleet.inventory.listAudit({ deviceId: id, type: 'token.consumed' })).toHaveLength(1);
    }
  }, 150_000);
});
