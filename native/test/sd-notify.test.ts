import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startNotifyReceiver, type NotifyReceiver } from '../../test/harness/notify-receiver.js';
import { loadBinding } from '../lib/binding.js';
import { nativeServiceNotifier, SdNotifyError } from '../lib/sd-notify.js';

// The addon reads NOTIFY_SOCKET from the process environment, as sd_notify(3) does; these tests set it
// (Node writes process.env through to the real environment) and restore it after each test.
describe('sdNotify (native/src/sd-notify.cc) against a python3 AF_UNIX datagram receiver', () => {
  let dir: string;
  let receiver: NotifyReceiver;
  const saved = process.env['NOTIFY_SOCKET'];
  const setSocket = (v: string | undefined) => {
    if (v === undefined) delete process.env['NOTIFY_SOCKET'];
    else process.env['NOTIFY_SOCKET'] = v;
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sd-notify-'));
    receiver = await startNotifyReceiver(join(dir, 'notify'));
  });
  afterEach(() => setSocket(saved));
  afterAll(async () => {
    await receiver?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('sends the state as one datagram to a socket path', async () => {
    setSocket(receiver.address);
    const from = receiver.messages.length;
    expect(loadBinding().sdNotify('READY=1\nSTATUS=online')).toBe(true);
    expect(nativeServiceNotifier().notify('WATCHDOG=1')).toBe(true);
    expect((await receiver.next(() => true, { from })).text).toBe('READY=1\nSTATUS=online');
    expect((await receiver.next(() => true, { from: from + 1 })).text).toBe('WATCHDOG=1');
  });

  it("sends to a name in the abstract namespace ('@name')", async () => {
    const abstract = await startNotifyReceiver(`@tpm-fleet-sd-notify-test-${process.pid}`);
    try {
      setSocket(abstract.address);
      expect(nativeServiceNotifier().notify('STATUS=abstract')).toBe(true);
      expect((await abstract.next(() => true)).text).toBe('STATUS=abstract');
    } finally {
      await abstract.stop();
    }
  });

  it('returns false, sending nothing, when NOTIFY_SOCKET is unset or empty', async () => {
    const from = receiver.messages.length;
    setSocket(undefined);
    expect(loadBinding().sdNotify('READY=1')).toBe(false);
    setSocket('');
    expect(nativeServiceNotifier().notify('READY=1')).toBe(false);
    await new Promise((r) => setTimeout(r, 200));
    expect(receiver.messages.length).toBe(from);
  });

  it('refuses an address too long for sun_path, or neither absolute nor abstract, with SD_NOTIFY_BAD_SOCKET', () => {
    const notifier = nativeServiceNotifier();
    const refused = (address: string) => {
      setSocket(address);
      try {
        notifier.notify('READY=1');
      } catch (e) {
        return e as SdNotifyError;
      }
      throw new Error(`${address} was accepted`);
    };
    const long = refused(`/${'a'.repeat(107)}`); // 108 bytes: no room left for the NUL
    expect(long).toBeInstanceOf(SdNotifyError);
    expect(long.code).toBe('SD_NOTIFY_BAD_SOCKET');
    expect(long.message).toMatch(/longer than an AF_UNIX path allows/);
    expect(refused(`@${'a'.repeat(108)}`).code).toBe('SD_NOTIFY_BAD_SOCKET');
    expect(refused('run/systemd/notify').message).toMatch(/absolute path or start with '@'/);
    // The raw binding throws a plain Error carrying the same code.
    setSocket(`/${'a'.repeat(200)}`);
    expect(() => loadBinding().sdNotify('READY=1')).toThrow(expect.objectContaining({ code: 'SD_NOTIFY_BAD_SOCKET' }));
  });

  it('throws SD_NOTIFY_FAILED with the errno text when nothing listens there', () => {
    setSocket(join(dir, 'nobody'));
    expect(() => nativeServiceNotifier().notify('READY=1')).toThrow(expect.objectContaining({ code: 'SD_NOTIFY_FAILED', message: expect.stringMatching(/sendto\(.*nobody\): No such file or directory/) }));
    setSocket('@tpm-fleet-sd-notify-nobody');
    expect(() => loadBinding().sdNotify('READY=1')).toThrow(expect.objectContaining({ code: 'SD_NOTIFY_FAILED', errno: 111, message: expect.stringMatching(/Connection refused/) }));
  });

  it('refuses a state that is not a non-empty string', () => {
    setSocket(receiver.address);
    expect(() => nativeServiceNotifier().notify('')).toThrow(expect.objectContaining({ code: 'SD_NOTIFY_BAD_STATE' }));
    expect(() => (loadBinding().sdNotify as (s: unknown) => boolean)(42)).toThrow(expect.objectContaining({ code: 'TPM_BAD_ARGUMENT' }));
  });
});
