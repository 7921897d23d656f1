import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../common/clock.js';
import { encodeCrlDelta, encodeCrlParts } from '../../common/protocol/crl.js';
import { Topics } from '../../common/protocol/topics.js';
import type { MessageHandler, Transport } from '../../common/transport/transport.js';
import { createCa, type CaMaterial } from '../../broker-bridge/src/ca/ca-setup.js';
import { CrlSigner, type CrlResponse, type RevokedCertificate } from '../../broker-bridge/src/ca/crl.js';
import { FleetUpdates, type FleetUpdatesHost } from './fleet-updates.js';
import { RevocationCache } from './revocation-cache.js';

const T0 = Date.UTC(2026, 5, 1, 8, 0, 0);

/** Only what FleetUpdates.subscribe uses: the handlers by filter, called by the test as the broker would. */
function capturingTransport(): { t: Transport; deliver(topic: string, payload: Buffer): void } {
  const handlers = new Map<string, MessageHandler>();
  const t = {
    subscribe: async (filter: string, handler: MessageHandler) => {
      handlers.set(filter, handler);
      return { unsubscribe: async () => undefined };
    },
  } as unknown as Transport;
  return {
    t,
    deliver(topic, payload) {
      const filter = [...handlers.keys()].find((f) => f === topic || (f.endsWith('/+') && topic.startsWith(f.slice(0, -1))));
      if (!filter) throw new Error(`no subscription for ${topic}`);
      void handlers.get(filter)!({ topic, payload, retain: false });
    },
  };
}

describe('FleetUpdates: CRL deltas', () => {
  let dir: string;
  let ca: CaMaterial;
  let crls: CrlSigner;
  const clock = new ManualClock(T0);
  const topics = new Topics('fleet/v1');
  const serial = (i: number) => (0x5000n + BigInt(i)).toString(16);
  const revoked = (n: number): RevokedCertificate[] =>
    Array.from({ length: n }, (_, i) => ({ serialNumber: serial(i + 1), revokedAt: new Date(T0 - 60_000) }));

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fleet-updates-'));
    ca = await createCa({
      outDir: join(dir, 'ca'),
      clock,
      trustDomain: 'fleet.example',
      root: { commonName: 'Updates Root' },
      issuing: { commonName: 'Updates Issuing' },
      backend: { kind: 'file', keyPath: join(dir, 'issuing-key.pem') },
    });
    crls = new CrlSigner({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock });
  });
  afterAll(async () => {
    await ca?.backend.close();
    rmSync(dir, { recursive: true, force: true });
  });

  let level: Level<string, unknown>;
  let cache: RevocationCache;
  let logs: { level: string; msg: string; fields?: Record<string, unknown> }[];
  let updates: FleetUpdates;
  let wire: ReturnType<typeof capturingTransport>;
  let n = 0;

  beforeEach(async () => {
    level = new Level<string, unknown>(join(dir, `store-${n++}`), { valueEncoding: 'json' });
    await level.open();
    cache = new RevocationCache(level.sublevel<string, unknown>('crl', { valueEncoding: 'json' }), { clock, graceSec: 300 });
    await cache.open();
    logs = [];
    const host: FleetUpdatesHost = {
      topics,
      dataDir: join(dir, `data-${n}`),
      crlGraceSec: 300,
      cache,
      identity: () => undefined,
      // The identity's chain would bring the issuing CA; without an identity the trust list carries it.
      trust: () => [ca.issuingCertificatePem, ca.rootCertificatePem],
      clockFloor: () => undefined,
      judgedNow: () => clock.now(),
      replaceTrust: async () => undefined,
      advanceFloor: async () => undefined,
      ownCertificateRevoked: () => undefined,
      log: (lvl, msg, fields) => void logs.push({ level: lvl, msg, ...(fields ? { fields } : {}) }),
      changed: () => undefined,
    };
    updates = new FleetUpdates(host, { trustVersion: undefined });
    wire = capturingTransport();
    await updates.subscribe(wire.t);
  });
  afterEach(async () => {
    await cache.close();
    await level.close();
  });

  const sign = (crlNumber: bigint, entries: number, baseCrlNumber?: bigint): Promise<CrlResponse> =>
    crls.sign({ crlNumber, nextUpdateSec: 3600, revoked: revoked(entries), ...(baseCrlNumber !== undefined ? { baseCrlNumber } : {}) });
  const deltaPayload = (crl: CrlResponse) =>
    encodeCrlDelta({ crlNumber: crl.crlNumber, baseCrlNumber: crl.baseCrlNumber!, thisUpdate: crl.thisUpdate, nextUpdate: crl.nextUpdate, der: crl.crlDer })!;
  const updatedTo = () => logs.filter((l) => l.msg === 'CRL updated').map((l) => l.fields!.crlNumber);
  const settle = async () => {
    // The queue drains through LevelDB writes: wait until two looks in a row see no change.
    for (let last = -1; ; ) {
      await new Promise((r) => setTimeout(r, 30));
      const now = logs.length;
      if (now === last) return;
      last = now;
    }
  };

  async function withBase(): Promise<void> {
    const base = await sign(1n, 0);
    for (const [i, p] of encodeCrlParts({ crlNumber: base.crlNumber, der: base.crlDer }).entries()) wire.deliver(topics.crlPart(i), p);
    await settle();
    expect(updatedTo()).toEqual(['1']);
  }

  it('a burst of deltas is handled as its newest: verified and stored once, every entry of the burst cached', async () => {
    await withBase();
    const burst = [];
    for (let k = 2; k <= 7; k++) burst.push(deltaPayload(await sign(BigInt(k), k - 1, 1n)));
    for (const p of burst) wire.deliver(topics.fleet('crlDelta'), p);
    await settle();
    expect(updatedTo()).toEqual(['1', '7']);
    expect(updates.deltasSuperseded).toBe(5);
    expect(cache.crlNumber()).toBe(7n);
    for (let i = 1; i <= 6; i++) expect(cache.status(serial(i)).revoked).toBe(true);
    expect(cache.status(serial(7)).revoked).toBe(false);
  });

  it('deltas that arrive one at a time are each taken; an older one after a newer changes nothing', async () => {
    await withBase();
    const d2 = deltaPayload(await sign(2n, 1, 1n));
    const d3 = deltaPayload(await sign(3n, 2, 1n));
    wire.deliver(topics.fleet('crlDelta'), d2);
    await settle();
    wire.deliver(topics.fleet('crlDelta'), d3);
    await settle();
    wire.deliver(topics.fleet('crlDelta'), d2);
    await settle();
    expect(updatedTo()).toEqual(['1', '2', '3']);
    expect(updates.deltasSuperseded).toBe(0);
    expect(cache.crlNumber()).toBe(3n);
  });

  it('an older delta arriving behind a waiting newer one does not replace it', async () => {
    await withBase();
    const d2 = deltaPayload(await sign(2n, 1, 1n));
    const d5 = deltaPayload(await sign(5n, 4, 1n));
    wire.deliver(topics.fleet('crlDelta'), d5);
    wire.deliver(topics.fleet('crlDelta'), d2);
    await settle();
    expect(updatedTo()).toEqual(['1', '5']);
    expect(cache.crlNumber()).toBe(5n);
  });

  it('a malformed delta in a burst is refused with its code and does not displace a valid one', async () => {
    await withBase();
    const d4 = deltaPayload(await sign(4n, 3, 1n));
    wire.deliver(topics.fleet('crlDelta'), d4);
    wire.deliver(topics.fleet('crlDelta'), Buffer.from('{"not":"a delta"}'));
    await settle();
    expect(updatedTo()).toEqual(['1', '4']);
    const refused = logs.find((l) => l.msg === 'refused a CRL message');
    expect(refused?.fields?.code).toMatch(/^SCHEMA_/);
  });
});
