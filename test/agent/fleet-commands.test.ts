import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { encode, type DeviceCommandName } from '../../common/protocol/messages.js';
import type { FleetServiceContext } from '../../broker-bridge/src/embedded-fleet.js';
import { eventually, recordingLogger, startFleetFixture, type FleetFixture } from './fleet-fixture.js';

/**
 * Fleet commands (operator rotate-now / reattest) reach a real agent as a retained message on its own
 * command topic, published by the bridge; the agent runs each command id once, across restarts, and
 * ignores expired ones.
 */
describe('fleet commands to a device (real swtpm, mosquitto, bridge)', () => {
  let fx: FleetFixture;
  let ctx: FleetServiceContext | undefined;

  beforeAll(async () => {
    fx = await startFleetFixture({
      extraHandlers: (c) => {
        ctx = c;
        return [];
      },
    });
  });
  afterAll(async () => {
    await fx?.stop();
  });

  const send = async (deviceId: string, command: DeviceCommandName, o: { expiresInMs?: number; jitterSec?: number } = {}) => {
    const id = `cmd-${randomBytes(8).toString('hex')}`;
    const now = Date.now();
    await ctx!.publish(
      fx.fleet.topics.device(deviceId, 'command'),
      encode('command', id, now, { command, issuedAt: now, expiresAt: now + (o.expiresInMs ?? 600_000), jitterSec: o.jitterSec ?? 0, by: 'ops' }),
      { qos: 1, retain: true },
    );
    return id;
  };
  const events = async (id: string, type: string) => (await fx.fleet.inventory.listDeviceEvents(id)).filter((e) => e.type === type);

  it('rotate-now: the device rotates once; the retained command is not run again after a restart', async () => {
    const d = await fx.device('cmd-rot');
    const id = d.bootstrap.deviceId;
    const log = recordingLogger();
    const a = fx.agent(d, { logger: log });
    await a.start();
    const first = a.status().certSerial!;
    const cmdId = await send(id, 'rotate-now');
    await eventually(() => a.status().certSerial !== first && a.state === 'online', 20_000, 'rotation');
    const second = a.status().certSerial!;
    await eventually(async () => (await events(id, 'rotated')).length === 1, 10_000, 'rotated event');
    expect(log.lines.some((l) => l.msg === 'running a fleet command' && l.fields.id === cmdId)).toBe(true);

    // The retained command arrives again on the next connection: already run, nothing happens.
    await a.stop();
    const again = fx.agent(d, { logger: log });
    await again.start();
    await new Promise((r) => setTimeout(r, 1500));
    expect(again.status().certSerial).toBe(second);
    expect((await events(id, 'rotated')).length).toBe(1);
    // The fleet withdraws the command (an empty retained message, as an aborted campaign does): the
    // agent takes it as the clearing it is, not as a malformed command.
    await ctx!.publish(fx.fleet.topics.device(id, 'command'), Buffer.alloc(0), { qos: 1, retain: true });
    await new Promise((r) => setTimeout(r, 500));
    expect(log.lines.filter((l) => l.msg === 'ignored a malformed fleet command')).toEqual([]);
    expect(again.state).toBe('online');
    await again.stop();
  });

  it('reattest: the device re-attests with its TPM and gets a new certificate', async () => {
    const d = await fx.device('cmd-reatt');
    const id = d.bootstrap.deviceId;
    const a = fx.agent(d);
    await a.start();
    const first = a.status().certSerial!;
    await send(id, 'reattest');
    await eventually(async () => (await events(id, 'reattested')).length === 1, 20_000, 'reattested event');
    await eventually(() => a.state === 'online' && a.status().certSerial !== first, 10_000, 'online with the new certificate');
    expect(fx.fleet.inventory.getDevice(id)!.reattestedAt).toBeGreaterThan(0);
    await a.stop();
  });

  it('an expired command is ignored; a command scheduled with jitter survives a restart', async () => {
    const d = await fx.device('cmd-late');
    const id = d.bootstrap.deviceId;
    const log = recordingLogger();
    // Jitter source at its top: the command is due jitterSec after receipt.
    const a = fx.agent(d, { logger: log, random: () => 0.999 });
    await a.start();
    const first = a.status().certSerial!;
    await send(id, 'rotate-now', { expiresInMs: -1000 });
    await eventually(() => log.lines.some((l) => l.msg === 'ignored an expired fleet command'), 10_000, 'expired command ignored');
    expect(a.status().certSerial).toBe(first);

    await send(id, 'rotate-now', { jitterSec: 3 });
    await eventually(() => log.lines.some((l) => l.msg === 'fleet command received'), 10_000, 'command received');
    await a.stop();
    expect(a.status().certSerial).toBe(first);
    // Restarted before it was due: the schedule was kept and the rotation happens.
    const again = fx.agent(d, { logger: log });
    await again.start();
    await eventually(() => again.status().certSerial !== first && again.state === 'online', 20_000, 'rotation after restart');
    await again.stop();
  });
});
