import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManagedProcess } from '../../common/managed-process.js';
import { eventually, startFleetFixture, type FleetFixture } from './fleet-fixture.js';

const run = promisify(execFile);

/**
 * The agent through tpm2-abrmd, the user-space resource manager some devices run instead of the
 * kernel's /dev/tpmrm0 (issue 13): a private D-Bus session bus, tpm2-abrmd in front of the device's
 * swtpm, and the agent's TCTI `tabrmd:bus_name=…,bus_type=session`. The resource manager virtualises
 * transient handles and flushes a client's objects when it goes, so the agent's slot handling
 * (reclaiming, flushing) must be right with it as without it.
 */
describe('agent through tpm2-abrmd (real swtpm, D-Bus, bridge, mosquitto)', () => {
  let fx: FleetFixture;
  const dir = mkdtempSync(join(tmpdir(), 'abrmd-'));
  const busName = `com.tpmfleet.Tabrmd.T${randomBytes(4).toString('hex')}`;
  const tcti = `tabrmd:bus_name=${busName},bus_type=session`;
  const busAddress = `unix:path=${join(dir, 'bus')}`;
  const procs: ManagedProcess[] = [];
  const savedBus = process.env['DBUS_SESSION_BUS_ADDRESS'];
  let swtpmTcti: string;
  let d: Awaited<ReturnType<FleetFixture['device']>>;

  /** tpm2-tools through the resource manager, as an operator on the device would use them. */
  const tools = async (tool: string, ...args: string[]) => (await run(tool, ['-T', tcti, ...args], { env: { ...process.env, DBUS_SESSION_BUS_ADDRESS: busAddress }, timeout: 20_000 })).stdout;

  beforeAll(async () => {
    fx = await startFleetFixture();
    // Registered first, straight on swtpm (the factory), before the resource manager takes its port.
    d = await fx.device('abrmd-device');
    swtpmTcti = d.bootstrap.tcti;
    procs.push(await ManagedProcess.start({ name: 'dbus-daemon', command: 'dbus-daemon', args: ['--session', '--nofork', `--address=${busAddress}`], ports: [] }));
    const env = { ...process.env, DBUS_SESSION_BUS_ADDRESS: busAddress };
    await eventually(async () => (await run('dbus-send', ['--session', '--print-reply', '--dest=org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus.ListNames'], { env }).then(() => true, () => false)), 10_000, 'the session bus');
    procs.push(
      await ManagedProcess.start({ name: 'tpm2-abrmd', command: 'tpm2-abrmd', args: ['--session', '--allow-root', `--dbus-name=${busName}`, `--tcti=${swtpmTcti}`, '--flush-all'], ports: [], env }),
    );
    await eventually(async () => (await tools('tpm2_getrandom', '8', '--hex').then(() => true, () => false)), 15_000, 'tpm2-abrmd answering');
    // The TCTI library reads the session bus address from this process's environment.
    process.env['DBUS_SESSION_BUS_ADDRESS'] = busAddress;
  }, 90_000);
  afterAll(async () => {
    await fx?.stop();
    for (const p of procs.reverse()) await p.stop();
    if (savedBus === undefined) delete process.env['DBUS_SESSION_BUS_ADDRESS'];
    else process.env['DBUS_SESSION_BUS_ADDRESS'] = savedBus;
    rmSync(dir, { recursive: true, force: true });
  });

  it('enrolls, rotates three times on one connection, and restarts on its stored identity', async () => {
    const device = { ...d, bootstrap: { ...d.bootstrap, tcti } };
    const a = fx.agent(device);
    await a.start();
    expect(a.state).toBe('online');
    // tpm2-abrmd caps the objects a client may hold loaded (27 by default) and answers
    // TPM_RC_OBJECT_MEMORY past that: an agent that leaked an object per rotation would hit it.
    for (let i = 1; i <= 3; i++) {
      const before = a.status().certSerial;
      a.rotateNow();
      await eventually(() => a.status().certSerial !== before && a.state === 'online', 30_000, `rotation ${i} through tpm2-abrmd`);
    }
    expect(a.status().rotations).toBe(3);
    const serial = a.status().certSerial;
    await a.stop();

    // A new process on the same store: same identity, no new enrollment.
    const b = fx.agent(device);
    await b.start();
    expect(b.status().certSerial).toBe(serial);
    expect(b.status().enrollment).toBeUndefined();
    await b.stop();
    expect(fx.fleet.inventory.listCertificates(d.bootstrap.deviceId)).toHaveLength(4);
    // The resource manager still serves other clients.
    expect((await tools('tpm2_getrandom', '8', '--hex')).trim()).toMatch(/^[0-9a-f]{16}$/);
  }, 90_000);
});
