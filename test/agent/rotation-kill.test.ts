import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Level } from 'level';
import mqtt from 'mqtt';
import { DEFAULT_AUDITOR } from '../../broker-bridge/src/embedded-fleet.js';
import { eventually, startFleetFixture, type FleetFixture } from './fleet-fixture.js';

/**
 * The shipped agent bundle as a process, SIGKILLed at each step of a rotation (the moment that message
 * is seen on the broker): no cleanup runs, and on swtpm its TPM objects stay loaded. Restarted, it must
 * end with exactly one working identity, and the fleet with exactly one active certificate for it.
 */
describe('agent process killed at each rotation step', () => {
  let fx: FleetFixture;
  const children: ChildProcess[] = [];
  let watcher: mqtt.MqttClient;

  beforeAll(async () => {
    fx = await startFleetFixture();
    // A read-only auditor (a role:bridge certificate would take over the bridge's session: sessions are named by CN).
    const role = await fx.fleet.clientCertificate(DEFAULT_AUDITOR);
    watcher = await mqtt.connectAsync(fx.fleet.broker.deviceUrl, { ca: fx.fleet.ca.rootCertificatePem, cert: role.certPem, key: role.keyPem, reconnectPeriod: 0, clientId: 'enr-kill-watcher' });
  });
  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await watcher?.endAsync();
    await fx?.stop();
  });

  function startAgent(bootstrap: string, dataDir: string, config: string): { child: ChildProcess; online: Promise<void>; exited: Promise<number | null>; out: () => string } {
    const child = spawn(process.execPath, ['dist/agent.mjs', '--bootstrap', bootstrap, '--data', dataDir, '--config', config], { stdio: ['ignore', 'inherit', 'pipe'] });
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
    return { child, online, exited, out: () => out };
  }

  it('ends with exactly one working identity whichever rotation step it was killed at', async () => {
    const d = await fx.device('kill-rot');
    const id = d.bootstrap.deviceId;
    const bootstrap = join(fx.dir, `${id}.json`);
    writeFileSync(bootstrap, JSON.stringify(d.bootstrap), { mode: 0o600 });
    // Continuous rotation: the renewal point lies inside the bridge's 5-minute backdate, so every new
    // certificate is due for renewal at once. The restarted agent uses the defaults (renew at 2/3).
    const rotating = join(fx.dir, 'rotating.json');
    writeFileSync(rotating, JSON.stringify({ v: 1, offlineBudget: { renewAtFraction: 0.0001, jitterFraction: 0.00001 }, backoff: { baseMs: 50, capMs: 2000 } }));
    const calm = join(fx.dir, 'calm.json');
    writeFileSync(calm, JSON.stringify({ v: 1, backoff: { baseMs: 50, capMs: 2000 } }));

    const steps = ['rotate/begin', 'rotate/challenge', 'rotate/request', 'rotate/accepted', 'rotate/confirm', 'rotate/confirmed'];
    await watcher.subscribeAsync(fx.fleet.topics.device(id, 'rotateBegin').replace(/rotate\/begin$/, 'rotate/#'), { qos: 1 });
    for (const step of steps) {
      const killAt = new Promise<void>((resolve) => {
        const onMessage = (topic: string) => {
          if (!topic.endsWith(`/${step}`)) return;
          watcher.off('message', onMessage);
          resolve();
        };
        watcher.on('message', onMessage);
      });
      const victim = startAgent(bootstrap, d.dataDir, rotating);
      await killAt;
      victim.child.kill('SIGKILL');
      await victim.exited;

      const survivor = startAgent(bootstrap, d.dataDir, calm);
      await survivor.online;
      // A rotation left half-done is finished (or rolled back) before the agent settles.
      const resumed = /"kind":"rotate"[^\n]*"msg":"resuming unfinished work"/.test(survivor.out());
      // Killed before the bridge confirmed, it must have found its rotation half-done.
      if (step !== 'rotate/confirmed') expect(resumed, step).toBe(true);
      await eventually(() => {
        const out = survivor.out();
        return !resumed || /"msg":"(rotated|rotation refused by the fleet; keeping the current identity|the broker refused the new certificate; rolling back to the old identity)"/.test(out);
      }, 20_000, `${step}: the interrupted rotation finished`);
      // It finishes whatever was half-done: one active certificate in the fleet, the one it uses.
      const settled = await eventually(() => {
        const active = fx.fleet.inventory.listCertificates(id).filter((c) => c.supersededAt === undefined && c.revokedAt === undefined);
        const status = fx.fleet.inventory.getDevice(id)?.status;
        return active.length === 1 && status?.online === true && status.certSerial === active[0]!.serial && status.state === 'online' ? active[0]!.serial : undefined;
      }, 20_000, `${step}: one active certificate in use`);
      survivor.child.kill('SIGTERM');
      expect(await survivor.exited).toBe(0);

      const db = new Level<string, unknown>(join(d.dataDir, 'state'), { valueEncoding: 'json' });
      const keys = (await db.keys().all()).filter((k) => !k.startsWith('!'));
      const active = (await db.get('active')) as string;
      const slot = (await db.get(`slot:${active}`)) as { serial: string };
      await db.close();
      expect(keys, step).not.toContain('pending');
      expect(keys.filter((k) => k.startsWith('slot:')), step).toEqual([`slot:${active}`]);
      expect(slot.serial, step).toBe(settled);
    }
    // Every rotation that got a certificate was either confirmed or abandoned: never two active.
    expect(fx.fleet.inventory.listCertificates(id).length).toBeGreaterThanOrEqual(steps.length);
  }, 180_000);
});
