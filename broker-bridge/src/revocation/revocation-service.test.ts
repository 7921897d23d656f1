import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { webcrypto } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../../common/clock.js';
import { createCa, type CaMaterial } from '../ca/ca-setup.js';
import { CrlSigner } from '../ca/crl.js';
import { LevelInventory } from '../inventory/level-inventory.js';
import type { BrokerEnforcement } from './broker-enforcement.js';
import { FileBrokerEnforcement } from './broker-enforcement.js';
import { generateMosquittoConfig } from '../broker/mosquitto-config.js';
import { RevocationService } from './revocation-service.js';

x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);

describe('RevocationService', () => {
  let dir: string;
  let ca: CaMaterial;
  let inv: LevelInventory;
  let clock: ManualClock;
  let applied: { crlPem: string; revokedIdentities: readonly string[] }[];
  let published: Buffer[];
  let failEnforcement: boolean;
  const enforcement: BrokerEnforcement = {
    apply: async (s) => {
      if (failEnforcement) throw Object.assign(new Error('down'), { code: 'REVOCATION_BROKER_FAILED' });
      applied.push(s);
    },
  };
  const service = () =>
    new RevocationService({
      inventory: inv,
      crlSigner: new CrlSigner({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock }),
      clock,
      stateFile: join(dir, 'crl-state.json'),
      enforcement,
      publish: async (p) => void published.push(p),
      nextUpdateSec: 3_600,
      refreshMarginSec: 600,
    });

  async function enrolled(id: string, serial: string): Promise<void> {
    const now = clock.now();
    await inv.registerDevice(
      { deviceId: id, ekPublicHash: `ek-${id}`, ekCertificate: 'AAAA', ekKind: 'ecc', metadata: {}, registeredAt: now },
      { tokenHash: `tok-${id}`, deviceId: id, ekPublicHash: `ek-${id}`, createdAt: now, expiresAt: now + 60_000 },
    );
    await inv.completeEnrollment({
      tokenHash: `tok-${id}`,
      requestId: `req-${id}`,
      deviceId: id,
      akName: '000b' + 'aa'.repeat(32),
      certificate: { serial, deviceId: id, notBefore: now, notAfter: now + 86_400_000, issuedAt: now, pem: 'PEM', keySpkiHash: 'k' },
      response: { requestId: `req-${id}`, deviceId: id, topic: 't', payload: 'cA==', storedAt: now },
      audit: [],
      at: now,
    });
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
    failEnforcement = false;
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
    expect(published).toHaveLength(1);

    clock.advance(3_000_000 - 1_000); // 2 999 s: 1 s before nextUpdate − 600 s
    expect(await s.tick()).toBe(false);
    expect(s.current!.crlNumber).toBe(1n);
    clock.advance(1_000);
    expect(await s.tick()).toBe(true);
    expect(s.current!.crlNumber).toBe(2n);
    expect(s.current!.thisUpdate.getTime()).toBe(clock.now());
    expect(published).toHaveLength(2);
    expect(JSON.parse(published[1]!.toString())).toMatchObject({ v: 1, crlNumber: '2', thisUpdate: clock.now(), nextUpdate: clock.now() + 3_600_000 });
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
