import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import mqtt from 'mqtt';
import { systemClock } from '../../common/clock.js';
import { decode } from '../../common/protocol/messages.js';
import { DEFAULT_AUDITOR, EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import { readEk, registerDevice } from '../../sim/src/sim/register-device.js';
import { Agent } from '../../agent/src/agent.js';
import { MqttTransport } from '../../common/transport/mqtt-transport.js';
import type { BootstrapConfig } from '../../agent/src/config.js';
import { startTpm, type TestTpm } from '../harness/index.js';

const run = promisify(execFile);

/** Real agents, each with its own swtpm, enroll through mosquitto and the bridge and go online over mTLS. */
describe('agents enroll end to end', () => {
  let dir: string;
  let fleet: EmbeddedFleet;
  const tpms: TestTpm[] = [];
  const agents: Agent[] = [];
  const configs = new Map<string, BootstrapConfig>();

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agents-'));
    tpms.push(...(await Promise.all([startTpm(), startTpm(), startTpm(), startTpm(), startTpm()])));
    fleet = await EmbeddedFleet.start({
      dir: join(dir, 'fleet'),
      clock: systemClock,
      trustDomain: 'test.fleet',
      ekTrust: { roots: [tpms[0]!.manufacturerRootPem], intermediates: [tpms[0]!.manufacturerIntermediatePem] },
    });
  });
  afterAll(async () => {
    await Promise.all(agents.map((a) => a.stop()));
    await fleet?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** What the factory station does, minimal: register the EK and mint a token. */
  async function bootstrapFor(deviceId: string, t: TestTpm): Promise<BootstrapConfig> {
    return registerDevice(fleet, { deviceId, tcti: t.tcti, ...(await readEk(t.tcti)), metadata: { model: 'sim' } });
  }

  it('three devices enroll, their certificates verify with openssl, and they are online over mTLS with TPM keys', async () => {
    const ids = ['agent-1', 'agent-2', 'agent-3'];
    const boots = await Promise.all(ids.map((id, i) => bootstrapFor(id, tpms[i]!)));
    boots.forEach((b) => configs.set(b.deviceId, b));
    const started = boots.map((bootstrap) => new Agent({ bootstrap, dataDir: join(dir, bootstrap.deviceId), responseTimeoutMs: 10_000 }));
    agents.push(...started);
    await Promise.all(started.map((a) => a.start()));
    writeFileSync(join(dir, 'root.pem'), fleet.ca.rootCertificatePem);
    writeFileSync(join(dir, 'issuing.pem'), fleet.ca.issuingCertificatePem);
    for (const [i, a] of started.entries()) {
      const s = a.status();
      expect(s.state).toBe('online');
      expect(s.tlsHandshakes).toBe(1);
      // CSR + certify inside the TPM, plus the one mTLS handshake: within the budget of 5.
      expect(s.tpmSignatures + s.tlsHandshakes).toBeLessThanOrEqual(5);
      const record = fleet.inventory.getCertificate(s.certSerial!)!;
      expect(record.deviceId).toBe(ids[i]);
      writeFileSync(join(dir, `leaf-${i}.pem`), record.pem);
      const { stdout } = await run('openssl', ['verify', '-CAfile', join(dir, 'root.pem'), '-untrusted', join(dir, 'issuing.pem'), join(dir, `leaf-${i}.pem`)]);
      expect(stdout).toContain('OK');
      expect(fleet.inventory.getDevice(ids[i]!)?.certSerial).toBe(s.certSerial);
    }
    // Their retained status reached the fleet (the bridge role can read every device's status).
    const seen = await retainedStatuses(ids);
    for (const id of ids) expect(seen.get(id)).toMatchObject({ online: true, state: 'online' });
  });

  it('restarts from its store without enrolling again, and publishes offline when it stops', async () => {
    const a = agents[0]!;
    const serial = a.status().certSerial;
    await a.stop();
    expect((await retainedStatuses(['agent-1'])).get('agent-1')).toMatchObject({ online: false });
    // A restarted process: a new Agent on the same data directory.
    const again = new Agent({ bootstrap: configs.get('agent-1')!, dataDir: join(dir, 'agent-1') });
    agents[0] = again;
    await again.start();
    expect(again.status()).toMatchObject({ state: 'online', certSerial: serial, tpmSignatures: 0 });
    expect(fleet.inventory.listCertificates('agent-1')).toHaveLength(1);
  });

  // Enrollment topics end in /request (enroll) and /proof, under the attempt's client id.
  for (const [i, step] of [[3, 'request'], [4, 'proof']] as const) {
    it(`finishes after being killed right after publishing ${step}, with the token used once`, async () => {
      const id = `agent-killed-${i}`;
      const bootstrap = await bootstrapFor(id, tpms[i]!);
      const dataDir = join(dir, id);
      // The agent "dies" (stop() at once; its store keeps what it wrote) the moment its message is on the wire.
      let dead = false;
      const dying: Agent = new Agent({
        bootstrap,
        dataDir,
        responseTimeoutMs: 5_000,
        transportFactory: (o) => {
          const t = new MqttTransport(o);
          const publish = t.publish.bind(t);
          t.publish = async (topic, payload, opts) => {
            if (dead) throw new Error('dead');
            await publish(topic, payload, opts);
            if (topic.endsWith(`/${step}`)) {
              dead = true;
              void dying.stop();
            }
          };
          return t;
        },
      });
      await expect(dying.start()).rejects.toMatchObject({ code: 'AGENT_STOPPED' });
      const revived = new Agent({ bootstrap, dataDir, responseTimeoutMs: 10_000 });
      agents.push(revived);
      await revived.start();
      expect(revived.state).toBe('online');
      expect(fleet.inventory.listCertificates(id)).toHaveLength(1);
      expect(fleet.inventory.getDevice(id)?.certSerial).toBe(revived.status().certSerial);
      expect(await fleet.inventory.listAudit({ deviceId: id, type: 'token.consumed' })).toHaveLength(1);
    });
  }

  async function retainedStatuses(ids: string[]): Promise<Map<string, { online: boolean; state: string }>> {
    // A read-only auditor (a role:bridge certificate would take over the bridge's session: sessions are named by CN).
    const op = await fleet.clientCertificate(DEFAULT_AUDITOR);
    const c = await mqtt.connectAsync(fleet.broker.deviceUrl, { ca: fleet.ca.rootCertificatePem, cert: op.certPem, key: op.keyPem, reconnectPeriod: 0, protocolVersion: 5, clientId: `enr-status-${Date.now()}` });
    const seen = new Map<string, { online: boolean; state: string }>();
    const all = new Promise<void>((resolve) => {
      c.on('message', (_t, p) => {
        const body = decode('status', p).body;
        seen.set(body.deviceId, body);
        if (ids.every((id) => seen.has(id))) resolve();
      });
    });
    await c.subscribeAsync('fleet/v1/devices/+/status', { qos: 1 });
    await Promise.race([all, new Promise((r) => setTimeout(r, 5000))]);
    await c.endAsync();
    return seen;
  }
});
