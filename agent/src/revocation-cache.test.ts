import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { randomInt, webcrypto } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../common/clock.js';
import { TAG, encodeTime, encodeUnsignedInteger, seq, tlv, toPem } from '../../common/der.js';
import { ECDSA_WITH_SHA256_ALGID } from '../../broker-bridge/src/ca/ca-backend.js';
import { parseIssuingCa } from '../../broker-bridge/src/ca/ca-cert.js';
import { createCa, type CaMaterial } from '../../broker-bridge/src/ca/ca-setup.js';
import { CrlSigner, type RevokedCertificate } from '../../broker-bridge/src/ca/crl.js';
import { assembleSigned } from '../../broker-bridge/src/ca/device-profile.js';
import { CertificateIssuer } from '../../broker-bridge/src/ca/issuer.js';
import { deviceKey, openssl } from '../../broker-bridge/src/ca/test-util.js';
import { verifyPeer } from './peer-verify.js';
import { RevocationCache, type RevocationView } from './revocation-cache.js';

x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);

const TD = 'fleet.example';
const T0 = Date.UTC(2026, 5, 1, 8, 0, 0);
const GRACE_SEC = 300;

interface Fleet {
  readonly ca: CaMaterial;
  readonly crls: CrlSigner;
  readonly issuer: CertificateIssuer;
  /** Issuing CA + root: what the agent holds from its certificate chain. */
  readonly issuers: string[];
}

async function fleet(dir: string, name: string, clock: ManualClock, names = { root: 'Fleet Root', issuing: 'Fleet Issuing' }): Promise<Fleet> {
  const ca = await createCa({
    outDir: join(dir, name),
    clock,
    trustDomain: TD,
    root: { commonName: names.root },
    issuing: { commonName: names.issuing },
    backend: { kind: 'file', keyPath: join(dir, `${name}-issuing-key.pem`) },
  });
  return {
    ca,
    crls: new CrlSigner({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock }),
    issuer: new CertificateIssuer({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock, trustDomain: TD }),
    issuers: [ca.issuingCertificatePem, ca.rootCertificatePem],
  };
}

/** A real LevelDB with the cache in a JSON sublevel, as the agent store provides it. */
class Db {
  level!: Level<string, unknown>;
  constructor(readonly path: string) {}
  async open() {
    this.level = new Level<string, unknown>(this.path, { valueEncoding: 'json' });
    await this.level.open();
    return this.level.sublevel<string, unknown>('crl', { valueEncoding: 'json' });
  }
}

describe('RevocationCache', () => {
  let dir: string;
  let clock: ManualClock;
  let a: Fleet; // the device's fleet
  let forger: Fleet; // another CA with the very same names
  let stranger: Fleet; // another CA with other names
  let db: Db;
  let cache: RevocationCache;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'revcache-'));
    clock = new ManualClock(T0);
    a = await fleet(dir, 'a', clock);
    forger = await fleet(dir, 'forger', clock);
    stranger = await fleet(dir, 'stranger', clock, { root: 'Other Root', issuing: 'Other Issuing' });
  });
  afterAll(async () => {
    for (const f of [a, forger, stranger]) await f?.ca.backend.close();
    rmSync(dir, { recursive: true, force: true });
  });

  let n = 0;
  beforeEach(async () => {
    clock.set(T0);
    db = new Db(join(dir, `db-${++n}`));
    cache = new RevocationCache(await db.open(), { clock, graceSec: GRACE_SEC });
    expect(await cache.open()).toBe('empty');
  });
  afterEach(async () => {
    await cache.close();
    await db.level.close();
  });

  const at = () => new Date(clock.now() - 60_000);
  const sign = (f: Fleet, crlNumber: number, revoked: RevokedCertificate[] = [], nextUpdateSec = 3_600) =>
    f.crls.sign({ crlNumber, nextUpdateSec, revoked });
  const leaf = async (f: Fleet, deviceId: string, lifetimeSec = 86_400) => {
    const r = await f.issuer.issue({ deviceId, publicKeySpki: deviceKey().spki, lifetimeSec, backdateSec: 60, trustDomain: TD });
    return { ...r, pem: toPem(r.certificateDer, 'CERTIFICATE') };
  };

  it('answers none before any CRL, then accepts a CRL and looks serials up in any spelling', async () => {
    expect(cache.status('4a01')).toEqual({ revoked: false, freshness: 'none' });
    expect(cache.thisUpdate()).toBeUndefined();

    const crl = await sign(a, 7, [
      { serialNumber: '4a01', revokedAt: at(), reason: 'keyCompromise' },
      { serialNumber: 'ABCDEF0123', revokedAt: at(), reason: 'superseded' },
      { serialNumber: '00ff', revokedAt: at() },
    ]);
    const r = await cache.accept(crl.crlDer, a.issuers, { graceSec: GRACE_SEC });
    expect(r).toEqual({ accepted: true, crlNumber: 7n, thisUpdate: crl.thisUpdate.getTime() });
    expect(cache.thisUpdate()).toBe(crl.thisUpdate.getTime());
    expect(cache.crlNumber()).toBe(7n);
    expect(cache.size()).toBe(3);

    const fresh = { freshness: 'fresh', thisUpdate: crl.thisUpdate.getTime(), nextUpdate: crl.nextUpdate.getTime() };
    expect(cache.status('4a01')).toEqual({ revoked: true, reason: 'keyCompromise', ...fresh });
    expect(cache.status('004A01')).toEqual({ revoked: true, reason: 'keyCompromise', ...fresh });
    expect(cache.status('abcdef0123')).toEqual({ revoked: true, reason: 'superseded', ...fresh });
    expect(cache.status('FF')).toEqual({ revoked: true, ...fresh }); // no reasonCode: unspecified is absent
    expect(cache.status('4a02')).toEqual({ revoked: false, ...fresh });

    // Our DER walker reads the same entries as @peculiar/x509 (which cannot read large CRLs, see the module).
    const peculiar = new x509.X509Crl(crl.crlDer);
    expect(peculiar.entries.map((e) => cache.status(e.serialNumber).revoked)).toEqual([true, true, true]);
  });

  it('refuses a CRL signed by another CA: same names → CRL_SIGNATURE_INVALID, other names → CRL_ISSUER_UNKNOWN', async () => {
    expect((await cache.accept((await sign(a, 1)).crlDer, a.issuers)).accepted).toBe(true);
    const victim = [{ serialNumber: 'aa55', revokedAt: at() }];

    const forged = await sign(forger, 99, victim);
    expect(new x509.X509Crl(forged.crlDer).issuer).toBe(new x509.X509Crl((await sign(a, 2)).crlDer).issuer);
    expect(await cache.accept(forged.crlDer, a.issuers)).toMatchObject({ accepted: false, code: 'CRL_SIGNATURE_INVALID' });

    const tampered = Buffer.from((await sign(a, 98, victim)).crlDer);
    tampered[tampered.length - 5]! ^= 0x01; // inside the ECDSA signature
    expect(await cache.accept(tampered, a.issuers)).toMatchObject({ accepted: false, code: 'CRL_SIGNATURE_INVALID' });

    expect(await cache.accept((await sign(stranger, 97, victim)).crlDer, a.issuers)).toMatchObject({ accepted: false, code: 'CRL_ISSUER_UNKNOWN' });
    // Only the root is known: the issuing CA that signed the CRL is not among the issuers.
    expect(await cache.accept((await sign(a, 96, victim)).crlDer, [a.ca.rootCertificatePem])).toMatchObject({
      accepted: false,
      code: 'CRL_ISSUER_UNKNOWN',
    });

    expect(cache.crlNumber()).toBe(1n);
    expect(cache.status('aa55').revoked).toBe(false);
  });

  it('refuses garbage, truncated and padded DER with CRL_MALFORMED', async () => {
    const good = (await sign(a, 1)).crlDer;
    for (const bad of [Buffer.alloc(0), Buffer.from('not a crl'), good.subarray(0, good.length - 1), Buffer.concat([good, Buffer.from([0])])]) {
      expect(await cache.accept(bad, a.issuers)).toMatchObject({ accepted: false, code: 'CRL_MALFORMED' });
    }
    expect(cache.status('1').freshness).toBe('none');
  });

  it('refuses a CRL whose number is not greater than the stored one (replay) with CRL_OLDER', async () => {
    const c3 = await sign(a, 3, [{ serialNumber: '03', revokedAt: at() }]);
    const c5 = await sign(a, 5, [{ serialNumber: '05', revokedAt: at() }]);
    expect((await cache.accept(c5.crlDer, a.issuers)).accepted).toBe(true);
    expect(await cache.accept(c3.crlDer, a.issuers)).toMatchObject({ accepted: false, code: 'CRL_OLDER' });
    expect(await cache.accept(c5.crlDer, a.issuers)).toMatchObject({ accepted: false, code: 'CRL_OLDER' });
    expect(cache.status('05').revoked).toBe(true);
    expect(cache.status('03').revoked).toBe(false);

    // Two accepts racing: serialized, so the older one cannot land last.
    const [c7, c6] = [await sign(a, 7), await sign(a, 6)];
    const results = await Promise.all([cache.accept(c7.crlDer, a.issuers), cache.accept(c6.crlDer, a.issuers)]);
    expect(results.map((r) => (r.accepted ? 'ok' : r.code))).toEqual(['ok', 'CRL_OLDER']);
    expect(cache.crlNumber()).toBe(7n);
  });

  it('turns stale after nextUpdate + grace, and fresh again with a newer CRL', async () => {
    const crl = await sign(a, 1, [{ serialNumber: '0bad', revokedAt: at() }], 3_600);
    await cache.accept(crl.crlDer, a.issuers, { graceSec: GRACE_SEC });
    clock.set(crl.nextUpdate.getTime() + GRACE_SEC * 1000);
    expect(cache.status('0bad')).toMatchObject({ revoked: true, freshness: 'fresh' });
    clock.advance(1);
    expect(cache.status('0bad')).toMatchObject({ revoked: true, freshness: 'stale' });
    expect(cache.status('0900')).toMatchObject({ revoked: false, freshness: 'stale' });

    const next = await sign(a, 2, [], 3_600);
    expect((await cache.accept(next.crlDer, a.issuers)).accepted).toBe(true);
    expect(cache.status('0bad')).toEqual({ revoked: false, freshness: 'fresh', thisUpdate: next.thisUpdate.getTime(), nextUpdate: next.nextUpdate.getTime() });
    expect(cache.thisUpdate()).toBe(next.thisUpdate.getTime());
  });

  it('keeps the CRL and its index across a restart, and still refuses older CRLs; a corrupt record is discarded', async () => {
    const crl = await sign(a, 4, [{ serialNumber: '4444', revokedAt: at(), reason: 'cessationOfOperation' }]);
    await cache.accept(crl.crlDer, a.issuers);
    await cache.close();
    await db.level.close();

    cache = new RevocationCache(await db.open(), { clock, graceSec: GRACE_SEC });
    expect(() => cache.status('4444')).toThrow(expect.objectContaining({ code: 'REVOCATION_CACHE_NOT_OPEN' }));
    expect(await cache.open()).toBe('loaded');
    expect(cache.status('4444')).toEqual({
      revoked: true,
      reason: 'cessationOfOperation',
      freshness: 'fresh',
      thisUpdate: crl.thisUpdate.getTime(),
      nextUpdate: crl.nextUpdate.getTime(),
    });
    expect(cache.thisUpdate()).toBe(crl.thisUpdate.getTime());
    expect(cache.crlNumber()).toBe(4n);
    expect(await cache.accept((await sign(a, 4)).crlDer, a.issuers)).toMatchObject({ accepted: false, code: 'CRL_OLDER' });

    // The two records disagree (as a torn write by something else would leave them): discarded, fail closed.
    await cache.close();
    await db.level.sublevel<string, unknown>('crl', { valueEncoding: 'json' }).put('serials', { crlNumber: '3', serials: [], reasons: {} });
    cache = new RevocationCache(db.level.sublevel<string, unknown>('crl', { valueEncoding: 'json' }), { clock, graceSec: GRACE_SEC });
    expect(await cache.open()).toBe('discarded');
    expect(cache.status('4444')).toEqual({ revoked: false, freshness: 'none' });
    expect((await cache.accept((await sign(a, 1)).crlDer, a.issuers)).accepted).toBe(true);
  });

  /**
   * The v2 CRL layout CrlSigner produces, assembled here (for what CrlSigner cannot make) and signed by
   * the same CA backend: many entries, extra CRL extensions, no nextUpdate.
   */
  async function handBuiltCrl(f: Fleet, o: { crlNumber: bigint; entries?: Buffer[]; extraExts?: Buffer[]; noNextUpdate?: boolean }): Promise<Buffer> {
    const info = parseIssuingCa(f.ca.issuingCertificatePem);
    const thisUpdate = Math.floor(clock.now() / 1000) * 1000;
    const aki = seq(Buffer.from('0603551d23', 'hex'), tlv(TAG.OCTET_STRING, seq(tlv(0x80, info.subjectKeyId))));
    const number = seq(Buffer.from('0603551d14', 'hex'), tlv(TAG.OCTET_STRING, encodeUnsignedInteger(o.crlNumber)));
    const entries = o.entries ?? [];
    const tbs = seq(
      Buffer.from('020101', 'hex'),
      ECDSA_WITH_SHA256_ALGID,
      info.subjectDer,
      encodeTime(thisUpdate),
      ...(o.noNextUpdate ? [] : [encodeTime(thisUpdate + 3_600_000)]),
      ...(entries.length > 0 ? [tlv(TAG.SEQUENCE, Buffer.concat(entries))] : []),
      tlv(0xa0, seq(aki, number, ...(o.extraExts ?? []))),
    );
    return assembleSigned(tbs, (await f.ca.backend.sign({ tbs })).signature);
  }

  it('refuses correctly signed CRLs it must not rely on with CRL_MALFORMED: non-critical delta indicator, removeFromCRL in a complete CRL, unknown critical extension, no nextUpdate', async () => {
    const ext = (oidHex: string, critical: boolean, value: Buffer) =>
      seq(Buffer.from(oidHex, 'hex'), ...(critical ? [Buffer.from('0101ff', 'hex')] : []), tlv(TAG.OCTET_STRING, value));
    const removeFromCrl = seq(encodeUnsignedInteger(0x77n), encodeTime(T0 - 60_000), seq(seq(Buffer.from('0603551d15', 'hex'), tlv(TAG.OCTET_STRING, tlv(TAG.ENUMERATED, Buffer.from([8]))))));
    const cases: Record<string, Buffer> = {
      nonCriticalDelta: await handBuiltCrl(a, { crlNumber: 5n, extraExts: [ext('0603551d1b', false, encodeUnsignedInteger(4n))] }),
      deltaNotAfterBase: await handBuiltCrl(a, { crlNumber: 5n, extraExts: [ext('0603551d1b', true, encodeUnsignedInteger(5n))] }),
      removeFromCrlInComplete: await handBuiltCrl(a, { crlNumber: 5n, entries: [removeFromCrl] }),
      unknownCritical: await handBuiltCrl(a, { crlNumber: 5n, extraExts: [ext('06032a0304', true, Buffer.from('0500', 'hex'))] }),
      noNextUpdate: await handBuiltCrl(a, { crlNumber: 5n, noNextUpdate: true }),
    };
    const why: Record<string, RegExp> = {
      nonCriticalDelta: /deltaCRLIndicator must be critical/,
      deltaNotAfterBase: /numbered after its base/,
      removeFromCrlInComplete: /removeFromCRL in a complete CRL/,
      unknownCritical: /critical CRL extension 2a0304/,
      noNextUpdate: /nextUpdate is required/,
    };
    for (const [name, der] of Object.entries(cases)) {
      const r = await cache.accept(der, a.issuers);
      expect(r, name).toMatchObject({ accepted: false, code: 'CRL_MALFORMED', reason: expect.stringMatching(why[name]!) });
    }
    // The same layout without the offending part is accepted: each refusal is for its own reason.
    expect(await cache.accept(await handBuiltCrl(a, { crlNumber: 5n }), a.issuers)).toMatchObject({ accepted: true, crlNumber: 5n });
    // The critical indicator with an earlier base is a delta on that complete CRL.
    const delta = await handBuiltCrl(a, { crlNumber: 6n, entries: [removeFromCrl], extraExts: [ext('0603551d1b', true, encodeUnsignedInteger(5n))] });
    expect(await cache.accept(delta, a.issuers)).toMatchObject({ accepted: true, crlNumber: 6n });
  });

  describe('delta CRLs (RFC 5280 5.2.4)', () => {
    const delta = (f: Fleet, crlNumber: number, baseCrlNumber: number, revoked: RevokedCertificate[] = [], nextUpdateSec = 3_600) =>
      f.crls.sign({ crlNumber, baseCrlNumber, nextUpdateSec, revoked });

    it('applies a delta on its base: status answers from base ∪ delta, freshness and thisUpdate from the delta; kept across a restart', async () => {
      const base = await sign(a, 10, [
        { serialNumber: '0a01', revokedAt: at(), reason: 'keyCompromise' },
        { serialNumber: '0a02', revokedAt: at() },
      ], 600);
      expect(await cache.accept(base.crlDer, a.issuers, { graceSec: 0 })).toMatchObject({ accepted: true, crlNumber: 10n });
      clock.advance(500_000);
      const d = await delta(a, 11, 10, [
        { serialNumber: '0b01', revokedAt: at(), reason: 'superseded' },
        { serialNumber: '0a02', revokedAt: at(), reason: 'removeFromCRL' },
      ]);
      expect(await cache.accept(d.crlDer, a.issuers)).toEqual({ accepted: true, crlNumber: 11n, thisUpdate: d.thisUpdate.getTime() });
      const check = () => {
        expect(cache.status('A01')).toMatchObject({ revoked: true, reason: 'keyCompromise' });
        expect(cache.status('b01')).toMatchObject({ revoked: true, reason: 'superseded' });
        expect(cache.status('a02').revoked).toBe(false); // removeFromCRL (RFC 5280 5.3.1)
        expect(cache.status('c01').revoked).toBe(false);
        expect(cache.size()).toBe(2);
        expect(cache.crlNumber()).toBe(11n);
        expect(cache.completeCrlNumber()).toBe(10n);
        expect(cache.thisUpdate()).toBe(d.thisUpdate.getTime());
        expect(cache.ders()).toEqual([base.crlDer, d.crlDer]);
      };
      check();
      // Past the base's nextUpdate, within the delta's: fresh (the newest CRL decides).
      clock.set(base.nextUpdate.getTime() + 1);
      expect(cache.status('0c01')).toEqual({ revoked: false, freshness: 'fresh', thisUpdate: d.thisUpdate.getTime(), nextUpdate: d.nextUpdate.getTime() });
      clock.set(d.nextUpdate.getTime() + 1);
      expect(cache.status('0c01').freshness).toBe('stale');

      await cache.close();
      await db.level.close();
      cache = new RevocationCache(await db.open(), { clock, graceSec: 0 });
      expect(await cache.open()).toBe('loaded');
      check();

      // A corrupt delta record is dropped alone: the complete CRL still answers.
      await cache.close();
      const sub = db.level.sublevel<string, unknown>('crl', { valueEncoding: 'json' });
      await sub.put('delta', { v: 1, crlNumber: 'eleven' });
      cache = new RevocationCache(sub, { clock, graceSec: 0 });
      expect(await cache.open()).toBe('discarded');
      expect(cache.ders()).toEqual([base.crlDer]);
      expect(cache.status('a02').revoked).toBe(true);
      expect(cache.status('b01').revoked).toBe(false);
    });

    it('a newer complete CRL supersedes a delta numbered at or below it and keeps one numbered after it', async () => {
      await cache.accept((await sign(a, 20, [{ serialNumber: '14', revokedAt: at() }])).crlDer, a.issuers);
      const d23 = await delta(a, 23, 20, [{ serialNumber: '17', revokedAt: at() }]);
      expect((await cache.accept(d23.crlDer, a.issuers)).accepted).toBe(true);
      // Complete 22 (a late one): newer than the held complete, older than the delta, which still applies.
      const c22 = await sign(a, 22, [{ serialNumber: '14', revokedAt: at() }, { serialNumber: '16', revokedAt: at() }]);
      expect(await cache.accept(c22.crlDer, a.issuers)).toMatchObject({ accepted: true, crlNumber: 22n });
      expect(cache.ders()).toEqual([c22.crlDer, d23.crlDer]);
      expect(cache.crlNumber()).toBe(23n);
      expect(['14', '16', '17'].map((s) => cache.status(s).revoked)).toEqual([true, true, true]);
      expect(cache.size()).toBe(3);
      // Complete 23, issued with the delta: the delta goes.
      const c23 = await sign(a, 23, [{ serialNumber: '14', revokedAt: at() }, { serialNumber: '16', revokedAt: at() }, { serialNumber: '17', revokedAt: at() }]);
      expect((await cache.accept(c23.crlDer, a.issuers)).accepted).toBe(true);
      expect(cache.ders()).toEqual([c23.crlDer]);
      expect(cache.crlNumber()).toBe(23n);
      await cache.close();
      cache = new RevocationCache(db.level.sublevel<string, unknown>('crl', { valueEncoding: 'json' }), { clock, graceSec: GRACE_SEC });
      expect(await cache.open()).toBe('loaded');
      expect(cache.ders()).toEqual([c23.crlDer]);
    });

    it('refuses a delta whose base it does not hold with CRL_BASE_MISSING, and accepts it once the base is in', async () => {
      const d = await delta(a, 31, 30, [{ serialNumber: '1f', revokedAt: at() }]);
      expect(await cache.accept(d.crlDer, a.issuers)).toMatchObject({ accepted: false, code: 'CRL_BASE_MISSING' });
      expect(cache.status('1f')).toEqual({ revoked: false, freshness: 'none' });
      // Holding an older complete CRL than the delta's base is not enough either.
      expect((await cache.accept((await sign(a, 29)).crlDer, a.issuers)).accepted).toBe(true);
      expect(await cache.accept(d.crlDer, a.issuers)).toMatchObject({ accepted: false, code: 'CRL_BASE_MISSING', reason: expect.stringMatching(/base 30/) });
      expect(cache.status('1f').revoked).toBe(false);
      expect((await cache.accept((await sign(a, 30)).crlDer, a.issuers)).accepted).toBe(true);
      expect(await cache.accept(d.crlDer, a.issuers)).toMatchObject({ accepted: true, crlNumber: 31n });
      expect(cache.status('1f').revoked).toBe(true);
    });

    it('refuses replays and older deltas with CRL_OLDER', async () => {
      await cache.accept((await sign(a, 40)).crlDer, a.issuers);
      const d42 = await delta(a, 42, 40, [{ serialNumber: '2a', revokedAt: at() }]);
      const d41 = await delta(a, 41, 40, [{ serialNumber: '29', revokedAt: at() }]);
      expect((await cache.accept(d42.crlDer, a.issuers)).accepted).toBe(true);
      expect(await cache.accept(d42.crlDer, a.issuers)).toMatchObject({ accepted: false, code: 'CRL_OLDER' });
      expect(await cache.accept(d41.crlDer, a.issuers)).toMatchObject({ accepted: false, code: 'CRL_OLDER' });
      // A delta numbered like the held complete CRL is no news either (they were issued together).
      expect(await cache.accept((await delta(a, 40, 39)).crlDer, a.issuers)).toMatchObject({ accepted: false, code: 'CRL_OLDER' });
      // An old delta whose base we also lack: no news first.
      expect(await cache.accept((await delta(a, 38, 37)).crlDer, a.issuers)).toMatchObject({ accepted: false, code: 'CRL_OLDER' });
      // A complete CRL older than the delta but not newer than the held complete one.
      expect(await cache.accept((await sign(a, 40)).crlDer, a.issuers)).toMatchObject({ accepted: false, code: 'CRL_OLDER' });
      expect(cache.status('29').revoked).toBe(false);
      expect(cache.status('2a').revoked).toBe(true);
      expect(cache.crlNumber()).toBe(42n);
    });

    it('refuses a forged delta (same names, another key) with CRL_SIGNATURE_INVALID', async () => {
      await cache.accept((await sign(a, 50)).crlDer, a.issuers);
      const forged = await delta(forger, 51, 50, [{ serialNumber: 'beef', revokedAt: at(), reason: 'keyCompromise' }]);
      expect(await cache.accept(forged.crlDer, a.issuers)).toMatchObject({ accepted: false, code: 'CRL_SIGNATURE_INVALID' });
      // Nor can a forger take a serial off with removeFromCRL.
      await cache.accept((await sign(a, 52, [{ serialNumber: 'cafe', revokedAt: at() }])).crlDer, a.issuers);
      const unrevoke = await delta(forger, 53, 52, [{ serialNumber: 'cafe', revokedAt: at(), reason: 'removeFromCRL' }]);
      expect(await cache.accept(unrevoke.crlDer, a.issuers)).toMatchObject({ accepted: false, code: 'CRL_SIGNATURE_INVALID' });
      expect(cache.status('cafe').revoked).toBe(true);
      expect(cache.status('beef').revoked).toBe(false);
      expect(cache.ders()).toHaveLength(1);
    });
  });

  describe('verifyPeer', () => {
    const bundle = () => [a.ca.rootCertificatePem];
    const chain = () => [a.ca.issuingCertificatePem];

    it('answers each code with its reason', async () => {
      const good = await leaf(a, 'gw-good', 3_600);
      const bad = await leaf(a, 'gw-bad');
      const now = clock.now();
      const v = (pem: string, opts: { chain?: string[]; now?: number; cache?: RevocationView } = {}) =>
        verifyPeer(pem, { trustBundle: bundle(), chain: opts.chain ?? chain(), now: opts.now ?? now, cache: opts.cache ?? cache });

      // No CRL cached yet.
      expect(v(good.pem)).toMatchObject({ valid: false, code: 'CRL_MISSING' });

      const crl = await sign(a, 1, [{ serialNumber: bad.serialNumber, revokedAt: at(), reason: 'keyCompromise' }], 3_600);
      await cache.accept(crl.crlDer, a.issuers);

      expect(v(good.pem)).toEqual({ valid: true, code: 'OK', reason: expect.any(String) });
      const revoked = v(bad.pem);
      expect(revoked).toMatchObject({ valid: false, code: 'REVOKED' });
      expect(revoked.reason).toContain('keyCompromise');

      expect(v(good.pem, { now: good.notAfter.getTime() + 1 })).toMatchObject({ valid: false, code: 'CERT_EXPIRED' });
      expect(v(good.pem, { now: good.notBefore.getTime() - 1 })).toMatchObject({ valid: false, code: 'CERT_NOT_YET_VALID' });

      // Without the intermediate, from another fleet, or garbage: no path to the bundle.
      expect(v(good.pem, { chain: [] })).toMatchObject({ valid: false, code: 'CHAIN_UNTRUSTED' });
      expect(v((await leaf(forger, 'gw-good')).pem, { chain: [forger.ca.issuingCertificatePem] })).toMatchObject({ valid: false, code: 'CHAIN_UNTRUSTED' });
      expect(v('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n')).toMatchObject({ valid: false, code: 'CHAIN_UNTRUSTED' });

      // Stale: past nextUpdate + grace. The revoked one stays REVOKED (revocation is final).
      const stale = crl.nextUpdate.getTime() + GRACE_SEC * 1000 + 1;
      const longGood = await leaf(a, 'gw-long', 86_400);
      expect(v(longGood.pem, { now: stale })).toMatchObject({ valid: false, code: 'CRL_STALE' });
      expect(v(bad.pem, { now: stale })).toMatchObject({ valid: false, code: 'REVOKED' });

      // A CRL from another issuer does not cover our certificates (serials are unique per issuer only).
      const otherDb = new Db(join(dir, `db-other-${n}`));
      const other = new RevocationCache(await otherDb.open(), { clock, graceSec: GRACE_SEC });
      await other.open();
      expect((await other.accept((await sign(stranger, 1)).crlDer, stranger.issuers)).accepted).toBe(true);
      expect(v(good.pem, { cache: other })).toMatchObject({ valid: false, code: 'CRL_MISSING' });
      await other.close();
      await otherDb.level.close();
    });
  });

  it('holds 100,000 revoked serials: accept, restart, and 100,000 status() lookups (timings printed, not asserted)', async () => {
    const N = 100_000;
    const serials: string[] = [];
    const revoked: RevokedCertificate[] = [];
    const revokedAt = at();
    for (let i = 0; i < N; i++) {
      const s = (BigInt(randomInt(1, 2 ** 47)) << 80n) | BigInt(i + 1); // 128-bit-ish, distinct
      serials.push(s.toString(16));
      revoked.push({ serialNumber: s.toString(16), revokedAt, ...(i % 10 === 0 ? { reason: 'keyCompromise' as const } : {}) });
    }
    const thisUpdate = Math.floor(clock.now() / 1000) * 1000;
    const der = (await a.crls.sign({ crlNumber: 1000, nextUpdateSec: 3_600, revoked })).crlDer;

    const crlPath = join(dir, 'big-crl.pem');
    writeFileSync(crlPath, toPem(der, 'X509 CRL'));
    const ok = await openssl(['crl', '-in', crlPath, '-CAfile', a.ca.files.chain, '-verify', '-noout']);
    expect(ok.code, ok.stderr).toBe(0);

    let t = performance.now();
    expect(await cache.accept(der, a.issuers)).toEqual({ accepted: true, crlNumber: 1000n, thisUpdate });
    const acceptMs = performance.now() - t;
    expect(cache.size()).toBe(N);

    await cache.close();
    await db.level.close();
    cache = new RevocationCache(await db.open(), { clock, graceSec: GRACE_SEC });
    t = performance.now();
    expect(await cache.open()).toBe('loaded');
    const openMs = performance.now() - t;
    expect(cache.size()).toBe(N);
    expect(cache.status(serials[0]!)).toMatchObject({ revoked: true, reason: 'keyCompromise' });
    expect(cache.status(serials[1]!.toUpperCase())).toMatchObject({ revoked: true });

    // Half revoked serials (as node prints them: uppercase, maybe zero-padded), half unknown.
    const queries = Array.from({ length: N }, (_, i) =>
      i % 2 === 0 ? serials[randomInt(N)]!.toUpperCase().padStart(32, '0') : randomInt(2 ** 47).toString(16).padStart(32, '0'),
    );
    for (let i = 0; i < 10_000; i++) cache.status(queries[i]!); // warm-up
    const ns = new Float64Array(N);
    let hits = 0;
    for (let i = 0; i < N; i++) {
      const s = process.hrtime.bigint();
      const r = cache.status(queries[i]!);
      ns[i] = Number(process.hrtime.bigint() - s);
      if (r.revoked) hits++;
    }
    expect(hits).toBeGreaterThanOrEqual(N / 2);
    ns.sort();
    const us = (q: number) => (ns[Math.min(N - 1, Math.floor(q * N))]! / 1000).toFixed(2);
    console.log(
      `revocation-cache: ${N} serials, CRL ${der.length} bytes; accept ${acceptMs.toFixed(0)} ms, open ${openMs.toFixed(0)} ms; ` +
        `status() over ${N} lookups: p50 ${us(0.5)} µs, p99 ${us(0.99)} µs, max ${us(1 - 1 / N)} µs`,
    );
  });
});
