import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decode, encode } from '../../common/protocol/messages.js';
import type { Reply } from '../../broker-bridge/src/enrollment/enrollment-service.js';
import type { StoredKey } from '../enrollment/scripted-device.js';
import { inventoryDigest, startFleet, wire, type Fleet } from './fleet.js';
import { cloneMessage, malformed, mutate, mutateBinaryField, newId, type FuzzInput, type WireMessage } from './mutators.js';
import { RSS_BOUND_MB, RunStats, checkReply, fail, foreignTopic, type Attempt } from './oracle.js';
import { Rng, fuzzRuns, fuzzSeed } from './prng.js';

/**
 * Fuzzes the bridge's RotationService (`devices/<id>/rotate/begin|request|confirm`), called directly
 * with a real swtpm, CA and LevelInventory (see fleet.ts). Same oracle as the enrollment suite: coded
 * rejections on the device's `rotate/rejected` (never INTERNAL, never an exception) or a legitimate
 * answer on the kind's answer topic; the inventory unchanged unless a certificate was issued
 * (request) or retired (confirm); RSS bounded.
 *
 * Requests: every request run first begins a fresh rotation for dev-rot (its nonce is burned by any
 * answer). The first runs (a twentieth, at most 100) mutate a real TPM2_Certify of a new TPM key over
 * that nonce, reaching the certify, CSR and key-is-new checks; the rest mutate the captured request
 * with the live rotationId spliced in (reaching the AK and certify checks). Confirms run last: a
 * legitimate confirm may retire certificates the other runs rotate from.
 * (Operator commands have their own suite: operator.fuzz.test.ts.)
 */
const RUNS = fuzzRuns(300);
const SEED = fuzzSeed();
/** vitest's 60 s default is for the small run; `npm run fuzz` (10 000 runs) needs longer. */
const TIMEOUT = 60_000 + RUNS * 40;
const DEVICES = ['dev-rot', 'dev-re', 'dev-conf', 'dev-reg', 'dev-rev', 'dev-tok', 'ghost'];

type RotKind = 'rotateBegin' | 'rotateRequest' | 'rotateConfirm';
const ANSWER: Record<RotKind, 'rotateChallenge' | 'rotateAccepted' | 'rotateConfirmed'> = {
  rotateBegin: 'rotateChallenge',
  rotateRequest: 'rotateAccepted',
  rotateConfirm: 'rotateConfirmed',
};
const SUFFIX: Record<RotKind, string> = { rotateBegin: 'rotate/begin', rotateRequest: 'rotate/request', rotateConfirm: 'rotate/confirm' };

describe('fuzz: rotation handler', () => {
  let fleet: Fleet;
  beforeAll(async () => {
    fleet = await startFleet();
  });
  afterAll(async () => {
    await fleet?.close();
  });

  const allCaptured = () => Object.values(fleet.captured).map(cloneMessage);
  const knownSerials = () => [...fleet.inventory.listCertificates().map((c) => c.serial), 'ffff', '00', 'a'.repeat(64)];

  /** Well-formed messages naming another device or serial (cross-device and stale identities). */
  function semantic(rng: Rng, base: WireMessage): FuzzInput {
    const body = base.body as Record<string, unknown>;
    if ('deviceId' in body && rng.chance(0.5)) body.deviceId = rng.pick(DEVICES);
    for (const k of ['currentSerial', 'serial', 'previousSerial']) if (k in body && rng.chance(0.6)) body[k] = rng.pick(knownSerials());
    return { label: `semantic: ${JSON.stringify(body).slice(0, 200)}`, payload: Buffer.from(JSON.stringify(base)) };
  }

  /** Sends one fuzzed message and checks it; returns the outcome. */
  async function attempt(stats: RunStats, kind: RotKind, run: number, input: FuzzInput, topic: string, digest: { value: string }, tag = ''): Promise<void> {
    const { topics, rotation, logger, inventory } = fleet;
    const a: Attempt = { handler: kind, seed: SEED, run, ...input, label: tag + input.label, topic };
    logger.clear();
    let reply: Reply | undefined;
    try {
      reply = await rotation.handle(topic, input.payload);
    } catch (e) {
      fail(a, `handle threw: ${(e as Error).stack ?? String(e)}`, logger);
    }
    const parsed = topics.parseDevice(topic);
    if (!parsed || parsed.topic !== kind) {
      if (reply !== undefined) fail(a, `answered a foreign topic on ${reply.topic}`, logger);
      stats.add('ignored (foreign topic)');
      return;
    }
    const outcome = checkReply(
      a,
      reply,
      {
        ok: { topic: topics.device(parsed.deviceId, ANSWER[kind]), kind: ANSWER[kind] },
        rejected: { topic: topics.device(parsed.deviceId, 'rotateRejected'), kind: 'rotateRejected' },
      },
      logger,
    );
    stats.add(tag && outcome !== ANSWER[kind] ? `${outcome} (${tag.trim()})` : outcome);
    const after = await inventoryDigest(inventory);
    // A challenge lives in memory; only an issued certificate or a confirm may write.
    if (outcome === 'rotateAccepted' || outcome === 'rotateConfirmed') digest.value = after;
    else if (after !== digest.value) fail(a, `the inventory changed after ${outcome}`, logger);
  }

  function topicFor(rng: Rng, kind: RotKind, own: string): string {
    const t = rng.next();
    if (t < 0.85) return fleet.topics.device(own, kind);
    if (t < 0.95) return fleet.topics.device(rng.pick(DEVICES), kind);
    return foreignTopic(rng, fleet.topics.base, SUFFIX[kind]);
  }

  const done = (stats: RunStats) => {
    stats.finish();
    console.log(stats.line());
    expect(stats.rssGrowthMb).toBeLessThan(RSS_BOUND_MB);
  };

  it(`begin: ${RUNS} fuzzed begins get coded answers and leave the inventory unchanged`, async () => {
    const rng = new Rng(SEED ^ 0x33);
    const stats = new RunStats('rotateBegin', SEED, RUNS);
    const others = allCaptured();
    const usedIds: string[] = [];
    const digest = { value: await inventoryDigest(fleet.inventory) };
    for (let run = 0; run < RUNS; run++) {
      const base = cloneMessage(fleet.captured.begin);
      base.requestId = newId(rng);
      // Mostly dev-rot; sometimes another device consistently in topic and body, to reach its checks.
      const own = rng.chance(0.8) ? 'dev-rot' : rng.pick(DEVICES);
      (base.body as Record<string, unknown>).deviceId = own;
      const r = rng.next();
      const input = r < 0.4 ? malformed(rng, base, 1024) : r < 0.85 ? mutate(rng, base, others, usedIds) : semantic(rng, base);
      await attempt(stats, 'rotateBegin', run, input, topicFor(rng, 'rotateBegin', own), digest);
      usedIds.push(base.requestId as string);
      if (usedIds.length > 64) usedIds.shift();
    }
    done(stats);
    expect(stats.codes.get('rotateChallenge') ?? 0).toBeGreaterThan(0);
  }, TIMEOUT);

  it(`request: ${RUNS} fuzzed requests against live rotations get coded answers; only an accepted one changes the inventory`, async () => {
    const rng = new Rng(SEED ^ 0x44);
    const stats = new RunStats('rotateRequest', SEED, RUNS);
    const { topics, rotation, clock, tpm, ak, serials } = fleet;
    const others = allCaptured();
    const usedIds: string[] = [];
    const deepRuns = Math.min(100, Math.ceil(RUNS / 20));
    const digest = { value: await inventoryDigest(fleet.inventory) };
    let key: StoredKey | undefined;
    let csr: Buffer | undefined;
    let acceptedWithKey = 0;
    for (let run = 0; run < RUNS; run++) {
      const beginReply = await rotation.handle(
        topics.device('dev-rot', 'rotateBegin'),
        encode('rotateBegin', newId(rng), clock.now(), { deviceId: 'dev-rot', currentSerial: serials['dev-rot'] }),
      );
      if (beginReply?.topic !== topics.device('dev-rot', 'rotateChallenge')) throw new Error(`setup: no rotation challenge (${beginReply?.payload.toString('utf8')})`);
      const ch = decode('rotateChallenge', beginReply.payload).body;
      const deep = run < deepRuns;
      let base: WireMessage;
      if (deep) {
        // A new key after every accepted rotation: a key is certified once per device.
        if (!key || (stats.codes.get('rotateAccepted') ?? 0) > acceptedWithKey) {
          key = await tpm.createKey();
          csr = await tpm.csr(key, 'dev-rot');
          acceptedWithKey = stats.codes.get('rotateAccepted') ?? 0;
        }
        base = wire(
          encode('rotateRequest', newId(rng), clock.now(), {
            rotationId: ch.rotationId,
            akPublic: ak.publicArea,
            keyPublic: key.publicArea,
            ...(await tpm.certify(key, ak, ch.nonce)),
            csr: csr!,
          }),
        ) as WireMessage;
      } else {
        base = cloneMessage(fleet.captured.request);
        if (rng.chance(0.9)) (base.body as Record<string, unknown>).rotationId = ch.rotationId;
      }
      base.requestId = newId(rng);
      const input = deep && rng.chance(0.7) ? mutateBinaryField(rng, base) : rng.chance(0.3) ? malformed(rng, base, 8 * 1024) : mutate(rng, base, others, usedIds);
      await attempt(stats, 'rotateRequest', run, input, topicFor(rng, 'rotateRequest', 'dev-rot'), digest, deep ? 'real certify; ' : '');
      usedIds.push(base.requestId as string);
      if (usedIds.length > 64) usedIds.shift();
    }
    done(stats);
  }, TIMEOUT);

  it(`confirm: ${RUNS} fuzzed confirms get coded answers; only a confirm changes the inventory`, async () => {
    const rng = new Rng(SEED ^ 0x55);
    const stats = new RunStats('rotateConfirm', SEED, RUNS);
    const others = allCaptured();
    const usedIds: string[] = [];
    const digest = { value: await inventoryDigest(fleet.inventory) };
    for (let run = 0; run < RUNS; run++) {
      const base = cloneMessage(fleet.captured.confirm);
      base.requestId = newId(rng);
      const r = rng.next();
      const input = r < 0.4 ? malformed(rng, base, 1024) : r < 0.8 ? mutate(rng, base, others, usedIds) : semantic(rng, base);
      await attempt(stats, 'rotateConfirm', run, input, topicFor(rng, 'rotateConfirm', 'dev-conf'), digest);
      usedIds.push(base.requestId as string);
      if (usedIds.length > 64) usedIds.shift();
    }
    done(stats);
    expect(stats.codes.get('rotateConfirmed') ?? 0).toBeGreaterThan(0);
  }, TIMEOUT);
});
