import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { webcrypto } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../../common/clock.js';
import { CRL_PART_BYTES, decodeCrlDelta, decodeCrlPart } from '../../../common/protocol/crl.js';
import { Topics } from '../../../common/protocol/topics.js';
import { openssl } from '../ca/test-util.js';
import { createCa, type CaMaterial } from '../ca/ca-setup.js';
import { CrlSigner } from '../ca/crl.js';
import { LevelInventory } from '../inventory/level-inventory.js';
import type { BrokerEnforcement } from './broker-enforcement.js';
import { FileBrokerEnforcement } from './broker-enforcement.js';
import { generateMosquittoConfig } from '../broker/mosquitto-config.js';
import { RevocationService, type RevocationServiceOptions } from './revocation-service.js';
import { recordEnrolledDevice } from '../inventory/test-records.js';

x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);

describe('RevocationService', () => {
  let dir: string;
  let ca: CaMaterial;
  let inv: LevelInventory;
  let clock: ManualClock;
  let applied: { crlPem: string; revokedIdentities: readonly string[] }[];
  /** Every publish, in order, and what a broker would retain; `log` interleaves publishes and broker reloads. */
  let published: { topic: string; payload: Buffer }[];
  let retained: Map<string, Buffer>;
  let log: string[];
  let failEnforcement: boolean;
  let failPublishAt: ((topic: string) => boolean) | undefined;
  const topics = new Topics('fleet/v1');
  const enforcement: BrokerEnforcement = {
    apply: async (s) => {
      if (failEnforcement) throw Object.assign(new Error('down'), { code: 'REVOCATION_BROKER_FAILED' });
      applied.push(s);
      log.push('enforce');
    },
  };
  const service = (o: Partial<RevocationServiceOptions> = {}) =>
    new RevocationService({
      inventory: inv,
      crlSigner: new CrlSigner({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock }),
      clock,
      stateFile: join(dir, 'crl-state.json'),
      enforcement,
      topics,
      publish: async (topic, payload) => {
        if (failPublishAt?.(topic)) throw Object.assign(new Error('down'), { code: 'TRANSPORT_NOT_CONNECTED' });
        published.push({ topic, payload });
        log.push(`publish ${topic.slice('fleet/v1/'.length)}`);
        if (payload.length === 0) retained.delete(topic);
        else retained.set(topic, payload);
      },
      nextUpdateSec: 3_600,
      refreshMarginSec: 600,
      ...o,
    });
  const deltaTopic = topics.fleet('crlDelta');
  /** The publishes since `from`, as `part <i> <crlNumber>`, `clear part <i>`, `delta <n>/<base>`, `clear delta`. */
  const sent = (from = 0) =>
    published.slice(from).map(({ topic, payload }) => {
      const part = topics.parseCrlPart(topic);
      if (payload.length === 0) return part === undefined ? 'clear delta' : `clear part ${part}`;
      if (part !== undefined) return `part ${part} ${decodeCrlPart(payload).crlNumber}`;
      const d = decodeCrlDelta(payload);
      return `delta ${d.crlNumber}/${d.baseCrlNumber}`;
    });

  async function enrolled(id: string, serial: string): Promise<void> {
    await recordEnrolledDevice(inv, { deviceId: id, serial, at: clock.now() });
  }

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'revsvc-'));
    clock = new ManualClock(Date.UTC(2026, 5, 1, 8, 0, 0));
    ca = await createCa({
      outDir: join(dir, 'ca'),
      clock,
      trustDomain: 'test.fleet',
      root: { commonName: 'R' },
      issuing: { commonName: 'I' },
      backend: { kind: 'file', keyPath: join(dir, 'issuing-key.pem') },
    });
    inv = new LevelInventory(join(dir, 'inv'));
    await inv.open();
    applied = [];
    published = [];
    retained = new Map();
    log = [];
    failEnforcement = false;
    failPublishAt = undefined;
  });
  afterEach(async () => {
    await inv.close();
    await ca.backend.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('issues CRL 1 at start, a new one only once nextUpdate − margin is reached, and continues the number after a restart', async () => {
    const s = service();
    const first = await s.start();
    expect(first.crlNumber).toBe(1n);
    expect(first.nextUpdate.getTime() - first.thisUpdate.getTime()).toBe(3_600_000);
    expect(applied).toHaveLength(1);
    // The first CRL is the devices' first base: one part, and no delta.
    expect(sent()).toEqual(['part 0 1', 'clear delta']);
    expect(s.devices).toMatchObject({ base: { crlNumber: 1n, size: 0 }, delta: undefined, published: true });

    clock.advance(3_000_000 - 1_000); // 2 999 s: 1 s before nextUpdate − 600 s
    expect(await s.tick()).toBe(false);
    expect(s.current!.crlNumber).toBe(1n);
    clock.advance(1_000);
    const n = published.length;
    expect(await s.tick()).toBe(true);
    expect(s.current!.crlNumber).toBe(2n);
    expect(s.current!.thisUpdate.getTime()).toBe(clock.now());
    // Refresh time renews the devices' base.
    expect(sent(n)).toEqual(['part 0 2', 'clear delta']);
    expect(JSON.parse(published[n]!.payload.toString())).toMatchObject({ v: 1, crlNumber: '2', part: 0, parts: 1 });
    expect(s.devices!.base.nextUpdate.getTime()).toBe(clock.now() + 3_600_000);
    await s.stop();

    const again = service();
    expect((await again.start()).crlNumber).toBe(3n);
    await again.stop();
  });

  it('revokes a device: inventory, CRL entry with reason, ACL identity, published; a repeat revokes nothing new', async () => {
    await enrolled('gw-1', '4a01');
    await enrolled('gw-2', '4a02');
    const s = service();
    await s.start();
    const r = await s.revokeDevice('gw-1', 'keyCompromise');
    expect(r).toEqual({ serials: ['4a01'], crlNumber: 2n, enforced: true });
    expect(inv.getDevice('gw-1')?.revokedAt).toBe(clock.now());
    expect(applied.at(-1)!.revokedIdentities).toEqual(['gw-1']);
    const crl = new x509.X509Crl(s.current!.crlDer);
    expect(crl.entries.map((e) => [e.serialNumber, e.reason])).toEqual([['4a01', x509.X509CrlReason.keyCompromise]]);
    expect(await s.revokeDevice('gw-1', 'keyCompromise')).toMatchObject({ serials: [], crlNumber: 3n });
    await s.stop();
  });

  it('revokes a serial: a device certificate revokes its device, any other serial is listed and persisted', async () => {
    await enrolled('gw-1', '4a01');
    const s = service();
    await s.start();
    expect(await s.revokeSerial('4A01', 'superseded')).toMatchObject({ serials: ['4a01'] });
    expect(inv.getDevice('gw-1')?.revokedAt).toBeDefined();
    expect(await s.revokeSerial('00beef', 'privilegeWithdrawn')).toMatchObject({ serials: ['beef'] });
    await s.stop();
    const again = service();
    await again.start();
    expect(new x509.X509Crl(again.current!.crlDer).entries.map((e) => e.serialNumber).sort()).toEqual(['4a01', 'beef']);
    await again.stop();
  });

  it('refuses bad input with its code and retries a failed broker update on the next tick', async () => {
    const s = service();
    await s.start();
    await expect(s.revokeDevice('gw-none', 'superseded')).rejects.toMatchObject({ code: 'REVOCATION_NOT_FOUND' });
    await expect(s.revokeDevice('bad/id', 'superseded')).rejects.toMatchObject({ code: 'REVOCATION_BAD_REQUEST' });
    await enrolled('gw-1', '4a01');
    await expect(s.revokeDevice('gw-1', 'because')).rejects.toMatchObject({ code: 'REVOCATION_BAD_REQUEST' });
    await expect(s.revokeSerial('xyz', 'superseded')).rejects.toMatchObject({ code: 'REVOCATION_BAD_REQUEST' });
    expect(inv.getDevice('gw-1')?.revokedAt).toBeUndefined();

    failEnforcement = true;
    const r = await s.revokeDevice('gw-1', 'superseded');
    expect(r.enforced).toBe(false);
    const n = applied.length;
    failEnforcement = false;
    expect(await s.tick()).toBe(false);
    expect(applied).toHaveLength(n + 1);
    expect(applied.at(-1)!.revokedIdentities).toEqual(['gw-1']);
    await s.stop();
  });

  it('refuses an unreadable state file with REVOCATION_STATE_INVALID', async () => {
    writeFileSync(join(dir, 'crl-state.json'), '{"v":1,"crlNumber":"x"}');
    await expect(service().start()).rejects.toMatchObject({ code: 'REVOCATION_STATE_INVALID' });
  });

  it('devices get a delta (RFC 5280 5.2.4) against their base on each revocation, published before the broker reloads', async () => {
    await enrolled('gw-1', '4a01');
    await enrolled('gw-2', '4a02');
    const s = service();
    await s.start();
    log = [];
    const n = published.length;
    await s.revokeDevice('gw-1', 'keyCompromise');
    expect(sent(n)).toEqual(['delta 2/1']);
    expect(log).toEqual(['publish crl/delta', 'enforce']);
    await s.revokeDevice('gw-2', 'superseded');
    // Cumulative since the base: both serials; the complete CRL (the broker's) has the same number.
    expect(sent(n)).toEqual(['delta 2/1', 'delta 3/1']);
    const d = s.devices!.delta!;
    expect(d.crlNumber).toBe(3n);
    expect(s.current!.crlNumber).toBe(3n);
    const msg = decodeCrlDelta(retained.get(deltaTopic)!);
    expect(msg).toMatchObject({ crlNumber: '3', baseCrlNumber: '1', thisUpdate: d.thisUpdate.getTime(), nextUpdate: d.nextUpdate.getTime() });
    expect(msg.crl.equals(d.crlDer)).toBe(true);
    writeFileSync(join(dir, 'delta.der'), d.crlDer);
    const text = (await openssl(['crl', '-inform', 'DER', '-in', join(dir, 'delta.der'), '-noout', '-text'])).stdout;
    expect(text).toMatch(/X509v3 Delta CRL Indicator: critical\s*\n\s*1\s*\n/);
    expect(text).toMatch(/Serial Number: 4A01[\s\S]*Key Compromise[\s\S]*Serial Number: 4A02[\s\S]*Superseded/);
    // The broker still gets the complete list.
    expect(new x509.X509Crl(s.current!.crlDer).entries.map((e) => e.serialNumber).sort()).toEqual(['4a01', '4a02']);
    await s.stop();
  });

  it('renews the base when the delta would list more than deltaMaxEntries serials', async () => {
    const s = service({ deltaMaxEntries: 2 });
    await s.start();
    const n = published.length;
    for (const serial of ['b1', 'b2', 'b3', 'b4']) await s.revokeSerial(serial, 'privilegeWithdrawn');
    expect(sent(n)).toEqual(['delta 2/1', 'delta 3/1', 'part 0 4', 'clear delta', 'delta 5/4']);
    expect(s.devices!.base).toMatchObject({ crlNumber: 4n, size: 3 });
    expect(retained.has(deltaTopic)).toBe(true);
    await s.stop();
  });

  it('keeps the number sequence and the base across a restart; resends the base only when the broker lost it', async () => {
    const s = service({ readRetained: async (t) => retained.get(t) });
    await s.start();
    await s.revokeSerial('c1', 'superseded');
    await s.stop();
    expect(existsSync(join(dir, 'crl-state.base.json'))).toBe(true);

    // Restart with the broker holding everything: the new CRL is a delta on the same base, nothing resent.
    let n = published.length;
    const again = service({ readRetained: async (t) => retained.get(t) });
    expect((await again.start()).crlNumber).toBe(3n);
    expect(sent(n)).toEqual(['delta 3/1']);
    expect(again.devices!.delta!.crlNumber).toBe(3n);
    await again.revokeSerial('c2', 'superseded');
    expect(sent(n)).toEqual(['delta 3/1', 'delta 4/1']);

    // The broker lost its retained messages (a crash before its autosave): republish() finds out and resends.
    retained.clear();
    n = published.length;
    await again.republish();
    expect(sent(n)).toEqual(['part 0 1', 'delta 4/1']);
    // Without a way to read the broker, a start resends the base.
    await again.stop();
    n = published.length;
    const blind = service();
    await blind.start();
    expect(sent(n)).toEqual(['part 0 1', 'delta 5/1']);
    await blind.stop();

    // A base file that does not match the state (lost, or from another state): a new base, numbering goes on.
    writeFileSync(join(dir, 'crl-state.base.json'), '{"v":1}');
    n = published.length;
    const fresh = service();
    expect((await fresh.start()).crlNumber).toBe(6n);
    expect(sent(n)).toEqual(['part 0 6', 'clear delta']);
    expect(fresh.devices!.base.size).toBe(2);
    await fresh.stop();
  });

  it('publishes a large base in parts, resumes after a failed part, and clears the parts a larger base left', async () => {
    // ~1 400 revoked service serials: a CRL of more than one part.
    const extra = Array.from({ length: 1_400 }, (_, i) => ({ serial: (0x5000000000000000n + BigInt(i)).toString(16), at: clock.now(), reason: 'superseded' }));
    writeFileSync(join(dir, 'crl-state.json'), JSON.stringify({ v: 1, crlNumber: '10', extra }));
    failPublishAt = (t) => t === topics.crlPart(1);
    const s = service();
    await s.start();
    const parts = s.devices!.partPayloads;
    expect(parts.length).toBe(Math.ceil(s.devices!.base.der.length / CRL_PART_BYTES));
    expect(parts.length).toBeGreaterThan(1);
    expect(sent()).toEqual(['part 0 11']); // part 1 failed: nothing after it, not even the delta
    expect(s.devices!.published).toBe(false);
    expect(applied).toHaveLength(1); // the broker is updated all the same
    failPublishAt = undefined;
    expect(await s.tick()).toBe(false);
    expect(sent()).toEqual(['part 0 11', ...parts.slice(1).map((_, i) => `part ${i + 1} 11`), 'clear delta']);
    expect(s.devices!.published).toBe(true);
    const joined = Buffer.concat(parts.map((p) => decodeCrlPart(p).data));
    expect(joined.equals(s.devices!.base.der)).toBe(true);
    await s.stop();

    // The service serials go (an operator edited the state); at refresh the base shrinks to one part,
    // and the parts the larger base left are cleared.
    const state = JSON.parse(readFileSync(join(dir, 'crl-state.json'), 'utf8')) as { extra: unknown[]; partsOnBroker: number };
    expect(state.partsOnBroker).toBe(parts.length);
    writeFileSync(join(dir, 'crl-state.json'), JSON.stringify({ ...state, extra: [] }));
    const again = service();
    await again.start();
    clock.advance(3_000_000);
    const n = published.length;
    expect(await again.tick()).toBe(true);
    expect(sent(n)).toEqual(['part 0 13', ...parts.slice(1).map((_, i) => `clear part ${i + 1}`), 'clear delta']);
    expect([...retained.keys()].sort()).toEqual([topics.crlPart(0)]);
    expect((JSON.parse(readFileSync(join(dir, 'crl-state.json'), 'utf8')) as { partsOnBroker: number }).partsOnBroker).toBe(1);
    await again.stop();
  });

  it('FileBrokerEnforcement rewrites only the revoked section of the generated ACL and the CRL file', async () => {
    const { deviceAcl } = generateMosquittoConfig({
      baseTopic: 'fleet/v1',
      enrollListener: { host: '127.0.0.1', port: 1 },
      deviceListener: { host: '127.0.0.1', port: 2 },
      tls: { serverCertFile: '/s', serverKeyFile: '/k', clientCaFile: '/c' },
      enrollAclFile: '/e',
      deviceAclFile: '/d',
      persistenceDir: '/p',
    });
    const aclFile = join(dir, 'device.acl');
    const crlFile = join(dir, 'crl.pem');
    writeFileSync(aclFile, deviceAcl);
    const e = new FileBrokerEnforcement({ crlFile, deviceAclFile: aclFile, pidFile: join(dir, 'no-such.pid') });
    await e.apply({ crlPem: 'CRL1', revokedIdentities: ['gw-2', 'gw-1'] });
    const acl = readFileSync(aclFile, 'utf8');
    expect(acl).toContain('user gw-1\ntopic deny #\nuser gw-2\ntopic deny #\n');
    expect(acl.replace(/user gw-\d\ntopic deny #\n/g, '')).toBe(deviceAcl);
    expect(readFileSync(crlFile, 'utf8')).toBe('CRL1');
    writeFileSync(join(dir, 'bad.pid'), 'nope');
    await expect(new FileBrokerEnforcement({ crlFile, deviceAclFile: aclFile, pidFile: join(dir, 'bad.pid') }).apply({ crlPem: 'x', revokedIdentities: [] })).rejects.toMatchObject({
      code: 'REVOCATION_BROKER_FAILED',
    });
    await expect(e.apply({ crlPem: 'x', revokedIdentities: ['bad id'] })).rejects.toMatchObject({ code: 'REVOCATION_BROKER_FAILED' });
  });
});
