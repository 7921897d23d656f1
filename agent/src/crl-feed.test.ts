import { randomInt } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../common/clock.js';
import {
  CRL_PART_BYTES,
  MAX_CRL_MESSAGE_BYTES,
  decodeCrlPart,
  encodeCrlDelta,
  encodeCrlParts,
  sha256Hex,
} from '../../common/protocol/crl.js';
import { Topics } from '../../common/protocol/topics.js';
import { createCa, type CaMaterial } from '../../broker-bridge/src/ca/ca-setup.js';
import { CrlSigner, type CrlResponse, type RevokedCertificate } from '../../broker-bridge/src/ca/crl.js';
import { Rng } from '../../test/fuzz/prng.js';
import { CrlFeed, type CrlFeedResult } from './crl-feed.js';
import { RevocationCache } from './revocation-cache.js';

const T0 = Date.UTC(2026, 5, 1, 8, 0, 0);

/** Bytes of an MQTT 5 PUBLISH (QoS1) carrying `payload` on `topic`, properties generously counted. */
function publishPacketBytes(topic: string, payload: Buffer): number {
  const remaining = 2 + Buffer.byteLength(topic) + 2 + 16 + payload.length;
  return 1 + (remaining < 128 ? 1 : remaining < 16_384 ? 2 : remaining < 2_097_152 ? 3 : 4) + remaining;
}

describe('CrlFeed', () => {
  let dir: string;
  let ca: CaMaterial;
  let crls: CrlSigner;
  let issuers: string[];
  const clock = new ManualClock(T0);
  const topics = new Topics('fleet/v1');

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'crl-feed-'));
    ca = await createCa({
      outDir: join(dir, 'ca'),
      clock,
      trustDomain: 'fleet.example',
      root: { commonName: 'Feed Root' },
      issuing: { commonName: 'Feed Issuing' },
      backend: { kind: 'file', keyPath: join(dir, 'issuing-key.pem') },
    });
    crls = new CrlSigner({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock });
    issuers = [ca.issuingCertificatePem, ca.rootCertificatePem];
  });
  afterAll(async () => {
    await ca?.backend.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const revokedList = (n: number, prefix: bigint): RevokedCertificate[] =>
    Array.from({ length: n }, (_, i) => ({ serialNumber: ((prefix << 64n) | BigInt(i + 1)).toString(16), revokedAt: new Date(T0 - 60_000) }));
  const partsOf = (crl: CrlResponse) => encodeCrlParts({ crlNumber: crl.crlNumber, der: crl.crlDer });
  const deltaOf = (crl: CrlResponse) =>
    encodeCrlDelta({ crlNumber: crl.crlNumber, baseCrlNumber: crl.baseCrlNumber!, thisUpdate: crl.thisUpdate, nextUpdate: crl.nextUpdate, der: crl.crlDer })!;
  async function openCache(name: string) {
    const level = new Level<string, unknown>(join(dir, name), { valueEncoding: 'json' });
    await level.open();
    const cache = new RevocationCache(level.sublevel<string, unknown>('crl', { valueEncoding: 'json' }), { clock, graceSec: 300 });
    expect(await cache.open()).toBe('empty');
    return { cache, close: async () => (await cache.close(), await level.close()) };
  }

  it('subscribes to every part and the delta', () => {
    expect(new CrlFeed({ topics }).filters).toEqual(['fleet/v1/crl/full/+', 'fleet/v1/crl/delta']);
  });

  it('100,000 revoked serials: signed, split into parts under the packet limit, reassembled, accepted by the cache; then a one-entry delta (sizes printed)', async () => {
    const N = 100_000;
    const serials: string[] = [];
    const revoked: RevokedCertificate[] = [];
    for (let i = 0; i < N; i++) {
      // 16-byte serials like the CA issues, a reason on one in ten.
      const s = ((BigInt(randomInt(1, 2 ** 47)) << 80n) | BigInt(i + 1)).toString(16);
      serials.push(s);
      revoked.push({ serialNumber: s, revokedAt: new Date(T0 - 60_000), ...(i % 10 === 0 ? { reason: 'keyCompromise' as const } : {}) });
    }
    const full = await crls.sign({ crlNumber: 100, nextUpdateSec: 86_400, revoked });
    const parts = partsOf(full);
    expect(parts.length).toBe(Math.ceil(full.crlDer.length / CRL_PART_BYTES));
    // Every part, with a long base topic and the MQTT headers, stays well under mosquitto's 64 KiB.
    const longTopics = new Topics(`${'x'.repeat(100)}/fleet/v1`);
    for (const [i, p] of parts.entries()) {
      expect(p.length).toBeLessThanOrEqual(MAX_CRL_MESSAGE_BYTES);
      expect(publishPacketBytes(longTopics.crlPart(i), p)).toBeLessThan(56 * 1024);
    }

    // Parts in a shuffled order, each delivered twice (QoS1 redelivery): one ready result, at the end.
    const feed = new CrlFeed({ topics });
    const rng = new Rng(7);
    const rnd = () => rng.next();
    const order = [...parts.keys(), ...parts.keys()].sort(() => rnd() - 0.5);
    const seen = new Set<number>();
    let ready: CrlFeedResult | undefined;
    for (const i of order) {
      seen.add(i);
      const r = feed.push(topics.crlPart(i), parts[i]!);
      if (seen.size < parts.length || ready) expect(r).toEqual({ kind: 'waiting' });
      else ready = r;
    }
    expect(ready?.kind).toBe('ready');
    const ders = (ready as { crls: Buffer[] }).crls;
    expect(ders).toHaveLength(1);
    expect(ders[0]!.equals(full.crlDer)).toBe(true);

    const { cache, close } = await openCache('big');
    expect(await cache.accept(ders[0]!, issuers)).toMatchObject({ accepted: true, crlNumber: 100n });
    expect(cache.size()).toBe(N);
    for (let i = 0; i < 1_000; i++) {
      const k = randomInt(N);
      expect(cache.status(serials[k]!.toUpperCase()).revoked).toBe(true);
    }
    expect(cache.status(serials[0]!)).toMatchObject({ revoked: true, reason: 'keyCompromise' });
    expect(cache.status('1234567890abcdef').revoked).toBe(false);

    // One revocation later: a delta with one entry against that base.
    const newSerial = 'fedcba9876543210fedcba9876543210';
    const delta = await crls.sign({ crlNumber: 101, baseCrlNumber: 100, nextUpdateSec: 86_400, revoked: [{ serialNumber: newSerial, revokedAt: new Date(T0), reason: 'keyCompromise' }] });
    const deltaMsg = deltaOf(delta);
    const d = feed.push(topics.fleet('crlDelta'), deltaMsg);
    expect(d).toEqual({ kind: 'ready', crls: [delta.crlDer] });
    expect(await cache.accept(delta.crlDer, issuers)).toMatchObject({ accepted: true, crlNumber: 101n });
    expect(cache.status(newSerial)).toMatchObject({ revoked: true, reason: 'keyCompromise' });
    expect(cache.size()).toBe(N + 1);
    console.log(
      `crl sizes: complete CRL with ${N} serials ${full.crlDer.length} bytes in ${parts.length} parts of ≤ ${Math.max(...parts.map((p) => p.length))} bytes; ` +
        `delta CRL for one revocation ${delta.crlDer.length} bytes DER, ${deltaMsg.length} bytes as a message`,
    );
    await close();
  });

  it('hands a delta that came before its base out again with the base; the cache applies both', async () => {
    const base = await crls.sign({ crlNumber: 200, nextUpdateSec: 3_600, revoked: revokedList(2_500, 0xa0n) });
    const delta = await crls.sign({ crlNumber: 203, baseCrlNumber: 200, nextUpdateSec: 3_600, revoked: [{ serialNumber: 'd00d', revokedAt: new Date(T0) }] });
    const parts = partsOf(base);
    expect(parts.length).toBeGreaterThan(1);
    const feed = new CrlFeed({ topics });
    const { cache, close } = await openCache('early-delta');

    const first = feed.push(topics.fleet('crlDelta'), deltaOf(delta));
    expect(first).toEqual({ kind: 'ready', crls: [delta.crlDer] });
    expect(await cache.accept(delta.crlDer, issuers)).toMatchObject({ accepted: false, code: 'CRL_BASE_MISSING' });

    let r: CrlFeedResult = { kind: 'waiting' };
    for (const [i, p] of parts.entries()) r = feed.push(topics.crlPart(i), p);
    expect(r).toEqual({ kind: 'ready', crls: [base.crlDer, delta.crlDer] });
    for (const der of (r as { crls: Buffer[] }).crls) expect((await cache.accept(der, issuers)).accepted).toBe(true);
    expect(cache.status('d00d').revoked).toBe(true);
    expect(cache.crlNumber()).toBe(203n);

    // The same base again (retained copies after a resubscription): ignored, nothing to verify twice.
    for (const [i, p] of parts.entries()) expect(feed.push(topics.crlPart(i), p)).toEqual({ kind: 'waiting' });
    // A cleared delta or part topic (empty retained payload) is nothing to do.
    expect(feed.push(topics.fleet('crlDelta'), Buffer.alloc(0))).toEqual({ kind: 'waiting' });
    expect(feed.push(topics.crlPart(7), Buffer.alloc(0))).toEqual({ kind: 'waiting' });
    await close();
  });

  it('never produces a wrong CRL from parts of two bases mixed, nor from parts with a lying digest', async () => {
    const a = await crls.sign({ crlNumber: 300, nextUpdateSec: 3_600, revoked: revokedList(3_000, 0xb0n) });
    const b = await crls.sign({ crlNumber: 301, nextUpdateSec: 3_600, revoked: revokedList(3_100, 0xb1n) });
    // Same number as b, other content (what a broken bridge could send): its own set, never joined with b's.
    const b2 = await crls.sign({ crlNumber: 301, nextUpdateSec: 3_600, revoked: revokedList(3_050, 0xb2n) });
    const pa = partsOf(a);
    const pb = partsOf(b);
    const pb2 = partsOf(b2);
    expect(pa.length).toBe(pb.length); // same part count: only crlNumber/sha256 tell them apart
    const valid = new Set([a.crlDer, b.crlDer, b2.crlDer].map((d) => d.toString('base64')));

    const rng = new Rng(42);
    const rnd = () => rng.next();
    let readies = 0;
    for (let round = 0; round < 200; round++) {
      const feed = new CrlFeed({ topics });
      for (let step = 0; step < 12; step++) {
        const pick = [pa, pb, pb2][Math.floor(rnd() * 3)]!;
        const i = Math.floor(rnd() * pick.length);
        const r = feed.push(topics.crlPart(i), pick[i]!);
        expect(r.kind).not.toBe('invalid');
        if (r.kind === 'ready') {
          readies++;
          for (const der of r.crls) expect(valid.has(der.toString('base64'))).toBe(true);
        }
      }
    }
    expect(readies).toBeGreaterThan(0);

    // Parts of a with b's digest and number: they form a set, and the digest refuses it.
    const feed = new CrlFeed({ topics });
    const bMeta = decodeCrlPart(pb[0]!);
    const lying = pa.map((p) => {
      const m = JSON.parse(p.toString()) as Record<string, unknown>;
      return Buffer.from(JSON.stringify({ ...m, crlNumber: bMeta.crlNumber, sha256: bMeta.sha256 }));
    });
    let r: CrlFeedResult = { kind: 'waiting' };
    for (const [i, p] of lying.entries()) r = feed.push(topics.crlPart(i), p);
    expect(r).toMatchObject({ kind: 'invalid', code: 'CRL_FEED_DIGEST_MISMATCH' });
    // The refused set is gone: b's own parts still assemble.
    for (const [i, p] of pb.entries()) r = feed.push(topics.crlPart(i), p);
    expect(r).toEqual({ kind: 'ready', crls: [b.crlDer] });
    expect(sha256Hex(b.crlDer)).toBe(bMeta.sha256);
  });

  it('keeps at most two sets in assembly: a third evicts the oldest, parts older than both or than the last completed base are ignored', async () => {
    const make = (n: number) => crls.sign({ crlNumber: n, nextUpdateSec: 3_600, revoked: revokedList(2_500, BigInt(n)) });
    const [c1, c2, c3] = [await make(401), await make(402), await make(403)];
    const [p1, p2, p3] = [partsOf(c1), partsOf(c2), partsOf(c3)];
    const feed = new CrlFeed({ topics });
    const push = (p: Buffer[], i: number) => feed.push(topics.crlPart(i), p[i]!);
    expect(push(p1, 0)).toEqual({ kind: 'waiting' });
    expect(push(p2, 0)).toEqual({ kind: 'waiting' });
    expect(push(p3, 0)).toEqual({ kind: 'waiting' }); // evicts 401
    // 401 is gone: finishing it needs its first part again.
    for (let i = 1; i < p1.length; i++) expect(push(p1, i)).toEqual({ kind: 'waiting' }); // older than both held: dropped
    let r: CrlFeedResult = { kind: 'waiting' };
    for (let i = 1; i < p3.length; i++) r = push(p3, i);
    expect(r).toEqual({ kind: 'ready', crls: [c3.crlDer] });
    // 402 is older than the completed 403: its parts are ignored from now on.
    for (let i = 0; i < p2.length; i++) expect(push(p2, i)).toEqual({ kind: 'waiting' });
  });

  it('refuses malformed messages with their codes and never throws', async () => {
    const feed = new CrlFeed({ topics, maxBytes: 4 * CRL_PART_BYTES });
    const crl = await crls.sign({ crlNumber: 500, nextUpdateSec: 3_600, revoked: revokedList(2_500, 0xc0n) });
    const parts = partsOf(crl);
    const m0 = JSON.parse(parts[0]!.toString()) as Record<string, unknown>;
    const last = JSON.parse(parts.at(-1)!.toString()) as Record<string, unknown>;
    const json = (o: unknown) => Buffer.from(JSON.stringify(o));
    const delta = await crls.sign({ crlNumber: 501, baseCrlNumber: 500, nextUpdateSec: 3_600, revoked: [] });
    const d = JSON.parse(deltaOf(delta).toString()) as Record<string, unknown>;
    const cases: [string, string, Buffer, string][] = [
      ['unknown topic', 'fleet/v1/crl/full', parts[0]!, 'CRL_FEED_TOPIC_UNKNOWN'],
      ['leading zero index', 'fleet/v1/crl/full/01', parts[1]!, 'CRL_FEED_TOPIC_UNKNOWN'],
      ['other base topic', 'fleet/v2/crl/full/0', parts[0]!, 'CRL_FEED_TOPIC_UNKNOWN'],
      ['part on another index', topics.crlPart(1), parts[0]!, 'CRL_FEED_PART_MISMATCH'],
      ['not JSON', topics.crlPart(0), Buffer.from('{"v":1,'), 'SCHEMA_NOT_JSON'],
      ['too large', topics.crlPart(0), Buffer.alloc(MAX_CRL_MESSAGE_BYTES + 1, 0x20), 'SCHEMA_TOO_LARGE'],
      ['unknown property', topics.crlPart(0), json({ ...m0, extra: 1 }), 'SCHEMA_INVALID'],
      ['part not below parts', topics.crlPart(3), json({ ...m0, part: 3, parts: 3 }), 'SCHEMA_INVALID'],
      ['short middle part', topics.crlPart(0), json({ ...m0, data: Buffer.alloc(100).toString('base64') }), 'SCHEMA_INVALID'],
      ['bad digest format', topics.crlPart(0), json({ ...m0, sha256: 'ABC' }), 'SCHEMA_INVALID'],
      ['crlNumber with a leading zero', topics.crlPart(0), json({ ...m0, crlNumber: '0500' }), 'SCHEMA_INVALID'],
      ['announced size over maxBytes', topics.crlPart(0), json({ ...m0, parts: 6 }), 'CRL_FEED_TOO_LARGE'],
      ['oversized last part', topics.crlPart(Number(last.part)), json({ ...last, data: Buffer.alloc(CRL_PART_BYTES + 3).toString('base64') }), 'SCHEMA_INVALID'],
      ['delta not after its base', topics.fleet('crlDelta'), json({ ...d, baseCrlNumber: '501' }), 'SCHEMA_INVALID'],
      ['delta without crl', topics.fleet('crlDelta'), json({ ...d, crl: undefined }), 'SCHEMA_INVALID'],
      ['delta not JSON', topics.fleet('crlDelta'), Buffer.from([0xff, 0xfe]), 'SCHEMA_NOT_JSON'],
    ];
    for (const [name, topic, payload, code] of cases) {
      expect(feed.push(topic, payload), name).toMatchObject({ kind: 'invalid', code });
    }

    // Mutations of valid messages and random bytes: a result every time, never an exception.
    const rng = new Rng(99);
    const rnd = () => rng.next();
    const samples = [parts[0]!, parts.at(-1)!, deltaOf(delta)];
    for (let i = 0; i < 3_000; i++) {
      const base = Buffer.from(samples[i % samples.length]!);
      const mutated =
        i % 4 === 0
          ? Buffer.from(Array.from({ length: Math.floor(rnd() * 200) }, () => Math.floor(rnd() * 256)))
          : (() => {
              for (let k = 0; k < 1 + Math.floor(rnd() * 4); k++) base[Math.floor(rnd() * base.length)] = Math.floor(rnd() * 256);
              return i % 3 === 0 ? base.subarray(0, Math.floor(rnd() * base.length)) : base;
            })();
      const topic = i % 2 === 0 ? topics.crlPart(Math.floor(rnd() * 3)) : topics.fleet('crlDelta');
      const r = feed.push(topic, mutated);
      expect(['ready', 'waiting', 'invalid']).toContain(r.kind);
    }
  });
});
