import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readEk, registerDevice } from '../../sim/src/sim/register-device.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { systemClock } from '../../common/clock.js';
import { DEFAULT_AUDITOR, EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import { startTpm, type TestTpm } from '../harness/index.js';

/**
 * The agent as a real process, SIGKILLed the moment its enroll or proof reaches the broker: no cleanup
 * runs, and on swtpm (no resource manager) its TPM objects stay loaded. A restarted agent must take
 * those slots back and finish with exactly one certificate and the token consumed once.
 */
describe('agent process killed mid-enrollment', () => {
  let dir: string;
  let fleet: EmbeddedFleet;
  let tpms: TestTpm[];
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agent-kill-'));
    tpms = await Promise.all([startTpm(), startTpm()]);
    fleet = await EmbeddedFleet.start({
      dir: join(dir, 'fleet'),
      clock: systemClock,
      trustDomain: 'test.fleet',
      ekTrust: { roots: [tpms[0]!.manufacturerRootPem], intermediates: [tpms[0]!.manufacturerIntermediatePem] },
    });
  });
  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await fleet?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function bootstrapFile(deviceId: string, t: TestTpm): Promise<string> {
    const boot = await registerDevice(fleet, { deviceId, tcti: t.tcti, ...(await readEk(t.tcti)) });
    const path = join(dir, `${deviceId}.json`);
    writeFileSync(path, JSON.stringify(boot), { mode: 0o600 });
    return path;
  }

  function startAgent(bootstrap: string, dataDir: string): { child: ChildProcess; online: Promise<void>; exited: Promise<number | null> } {
    const child = spawn(process.execPath, ['dist/agent.mjs', '--bootstrap', bootstrap, '--data', dataDir], { stdio: ['ignore', 'inherit', 'pipe'] });
    children.push(child);
    let out = '';
    const online = new Promise<void>((resolve, reject) => {
      child.stderr!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('"msg":"online"')) resolve();
      });
      child.once('exit', (code) => reject(new Error(`agent exited (${code}) before going online:\n${out}`)));
    });
    online.catch(() => undefined);
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    return { child, online, exited };
  }

  for (const [i, step] of [[0, 'enroll'], [1, 'enroll/proof']] as const) {
    it(`finishes after SIGKILL right when its ${step} reaches the broker`, async () => {
      const id = `killed-${i}`;
      const bootstrap = await bootstrapFile(id, tpms[i]!);
      const dataDir = join(dir, `data-${i}`);
      // Watch the broker as a read-only auditor: the instant the message is there, kill the agent. (Not as
      // role:bridge: the broker names mutual-TLS sessions by CN, so that would take over the bridge's.)
      const role = await fleet.clientCertificate(DEFAULT_AUDITOR);
      const watcher = await mqtt.connectAsync(fleet.broker.deviceUrl, { ca: fleet.ca.rootCertificatePem, cert: role.certPem, key: role.keyPem, reconnectPeriod: 0, clientId: `enr-watch-${i}` });
      // Enrollment is addressed by the attempt's random client id: watch every attempt (only this one runs).
      await watcher.subscribeAsync(fleet.topics.allEnrollments(step === 'enroll' ? 'enroll' : 'enrollProof'), { qos: 1 });
      const first = startAgent(bootstrap, dataDir);
      await new Promise<void>((resolve) => watcher.once('message', () => resolve()));
      first.child.kill('SIGKILL');
      await first.exited;
      await watcher.endAsync();

      const second = startAgent(bootstrap, dataDir);
      await second.online;
      second.child.kill('SIGTERM');
      await second.exited;
      expect(fleet.inventory.listCertificates(id)).toHaveLength(1);
      expect(fleet.inventory.getDevice(id)?.certSerial).toBe(fleet.inventory.listCertificates(id)[0]!.serial);
      expect(await fleet.inventory.listAudit({ deviceId: id, type: 'token.consumed' })).toHaveLength(1);
    });
  }
});
