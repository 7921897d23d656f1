import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decode, encode } from '../../common/protocol/messages.js';
import { enrollClientId, inventoryDigest, startFleet, wire, type Fleet } from './fleet.js';
import { cloneMessage, malformed, mutate, mutateBinaryField, newId, type FuzzInput, type WireMessage } from './mutators.js';
import { RSS_BOUND_MB, RunStats, checkReply, fail, foreignTopic, type Attempt } from './oracle.js';
import { Rng, fuzzRuns, fuzzSeed } from './prng.js';

/**
 * Fuzzes the bridge's EnrollmentService (`enroll/<client id>/request` and `…/proof`), called directly
 * with a real swtpm, CA and LevelInventory (see fleet.ts). Inputs are generated malformed messages and
 * mutations of captured valid ones. Every reply must be a coded rejection on the attempt's rejection
 * topic (never INTERNAL, never an exception) or a legitimate answer on its answer topic, the inventory
 * must be unchanged unless a certificate was issued, and RSS stays bounded.
 *
 * Proofs: a proof is only checked past CHALLENGE_UNKNOWN against a live challenge, and only past
 * ACTIVATION_FAILED with the secret the TPM activated. So every proof run first gets a fresh
 * re-attestation challenge (for dev-re, which can re-attest any number of times). The first runs
 * (a twentieth, at most 100) then mutate the TPM's real answer to that challenge, which reaches the
 * certify and CSR checks; the rest mutate the captured proof with the live challengeId spliced in
 * (structural: reaches activation). A mutation that leaves a real answer valid is a legitimate
 * re-attestation (a new certificate), counted as `enrollAccepted`.
 */
const RUNS = fuzzRuns(300);
const SEED = fuzzSeed();
/** vitest's 60 s default is for the small run; `npm run fuzz` (10 000 runs) needs longer. */
const TIMEOUT = 60_000 + RUNS * 40;
const OTHER_DEVICES = ['dev-re', 'dev-tok', 'dev-reg', 'dev-rev', 'dev-rot', 'ghost', 'dev-conf'];

describe('fuzz: enrollment handler', () => {
  let fleet: Fleet;
  beforeAll(async () => {
    fleet = await startFleet();
  });
  afterAll(async () => {
    await fleet?.close();
  });

  const allCaptured = () => Object.values(fleet.captured).map(cloneMessage);

  /** Enroll bodies that are well-formed but name another device, mode or token. */
  function semanticEnroll(rng: Rng, base: WireMessage): FuzzInput {
    const body = base.body as Record<string, unknown>;
    body.deviceId = rng.pick(OTHER_DEVICES);
    const how = rng.pick(['keep', 'reattest', 'token-mode', 'reattest+token', 'token-missing']);
    if (how === 'reattest') {
      body.mode = 'reattest';
      delete body.token;
    } else if (how === 'token-mode') {
      body.mode = 'token';
      body.token = newId(rng, 43);
    } else if (how === 'reattest+token') {
      body.mode = 'reattest';
      body.token = newId(rng, 43);
    } else if (how === 'token-missing') {
      delete body.token;
      delete body.mode;
    }
    return { label: `semantic: deviceId ${String(body.deviceId)}, ${how}`, payload: Buffer.from(JSON.stringify(base)) };
  }

  it(`enroll: ${RUNS} fuzzed requests get coded answers and leave the inventory unchanged`, async () => {
    const rng = new Rng(SEED ^ 0x11);
    const stats = new RunStats('enroll', SEED, RUNS);
    const { topics, enrollment, logger, inventory } = fleet;
    const client = enrollClientId('fuzz-enroll');
    const others = allCaptured();
    const usedIds: string[] = [];
    let digest = await inventoryDigest(inventory);
    for (let run = 0; run < RUNS; run++) {
      const base = cloneMessage(rng.chance(0.5) ? fleet.captured.tokenEnroll : fleet.captured.reattestEnroll);
      base.requestId = newId(rng);
      const r = rng.next();
      const input = r < 0.4 ? malformed(rng, base, 16 * 1024) : r < 0.85 ? mutate(rng, base, others, usedIds) : semanticEnroll(rng, base);
      const t = rng.next();
      const clientId = t < 0.9 ? client : enrollClientId(`other-${rng.int(4)}`);
      const topic = t < 0.95 ? topics.enrollment(clientId, 'enroll') : foreignTopic(rng, topics.base, 'request');
      const a: Attempt = { handler: 'enroll', seed: SEED, run, ...input, topic };
      logger.clear();
      let reply;
      try {
        reply = await enrollment.handle(topic, input.payload);
      } catch (e) {
        fail(a, `handle threw: ${(e as Error).stack ?? String(e)}`, logger);
      }
      const parsed = topics.parseEnrollment(topic);
      if (!parsed || parsed.topic !== 'enroll') {
        if (reply !== undefined) fail(a, `answered a foreign topic on ${reply.topic}`, logger);
        stats.add('ignored (foreign topic)');
        continue;
      }
      const outcome = checkReply(
        a,
        reply,
        {
          ok: { topic: topics.enrollment(parsed.clientId, 'enrollChallenge'), kind: 'enrollChallenge' },
          rejected: { topic: topics.enrollment(parsed.clientId, 'enrollRejected'), kind: 'enrollRejected' },
        },
        logger,
      );
      stats.add(outcome);
      usedIds.push(base.requestId as string);
      if (usedIds.length > 64) usedIds.shift();
      // A challenge lives in memory only: no enroll, answered or not, writes to the inventory.
      const after = await inventoryDigest(inventory);
      if (after !== digest) fail(a, `the inventory changed after ${outcome}`, logger);
    }
    stats.finish();
    console.log(stats.line());
    expect(stats.rssGrowthMb).toBeLessThan(RSS_BOUND_MB);
    // The deep checks were reached: the captured requests still get challenges among the mutations.
    expect(stats.codes.get('enrollChallenge') ?? 0).toBeGreaterThan(0);
  }, TIMEOUT);

  it(`proof: ${RUNS} fuzzed proofs against live challenges get coded answers; only an accepted one changes the inventory`, async () => {
    const rng = new Rng(SEED ^ 0x22);
    const stats = new RunStats('enrollProof', SEED, RUNS);
    const { topics, enrollment, logger, inventory, clock } = fleet;
    const client = enrollClientId('fuzz-proof');
    const others = allCaptured();
    const usedIds: string[] = [];
    const deepRuns = Math.min(100, Math.ceil(RUNS / 20));
    let digest = await inventoryDigest(inventory);
    for (let run = 0; run < RUNS; run++) {
      // A fresh challenge for dev-re on this client (the previous one is replaced or burned).
      const enrollPayload = encode('enroll', newId(rng), clock.now(), decode('enroll', Buffer.from(JSON.stringify(fleet.captured.reattestEnroll))).body);
      const chReply = await enrollment.handle(topics.enrollment(client, 'enroll'), enrollPayload);
      if (chReply?.topic !== topics.enrollment(client, 'enrollChallenge')) throw new Error(`setup: no challenge (${chReply?.payload.toString('utf8')})`);
      const challenge = decode('enrollChallenge', chReply.payload).body;

      const deep = run < deepRuns;
      const base: WireMessage = deep ? wire(encode('enrollProof', newId(rng), clock.now(), await fleet.answer(challenge))) as WireMessage : cloneMessage(fleet.captured.proof);
      base.requestId = newId(rng);
      if (!deep && rng.chance(0.9)) (base.body as Record<string, unknown>).challengeId = challenge.challengeId;
      // Real answers mostly get their binary evidence mutated: that is what the deep checks read.
      const input =
        deep && rng.chance(0.7) ? mutateBinaryField(rng, base) : rng.chance(0.3) ? malformed(rng, base, 8 * 1024) : mutate(rng, base, others, usedIds);
      const t = rng.next();
      const clientId = t < 0.92 ? client : enrollClientId(`thief-${rng.int(3)}`);
      const topic = t < 0.96 ? topics.enrollment(clientId, 'enrollProof') : foreignTopic(rng, topics.base, 'proof');
      const a: Attempt = { handler: 'enrollProof', seed: SEED, run, label: `${deep ? 'real answer' : 'captured proof'}; ${input.label}`, payload: input.payload, topic };
      logger.clear();
      let reply;
      try {
        reply = await enrollment.handle(topic, input.payload);
      } catch (e) {
        fail(a, `handle threw: ${(e as Error).stack ?? String(e)}`, logger);
      }
      const parsed = topics.parseEnrollment(topic);
      if (!parsed || parsed.topic !== 'enrollProof') {
        if (reply !== undefined) fail(a, `answered a foreign topic on ${reply.topic}`, logger);
        stats.add('ignored (foreign topic)');
        continue;
      }
      const outcome = checkReply(
        a,
        reply,
        {
          ok: { topic: topics.enrollment(parsed.clientId, 'enrollAccepted'), kind: 'enrollAccepted' },
          rejected: { topic: topics.enrollment(parsed.clientId, 'enrollRejected'), kind: 'enrollRejected' },
        },
        logger,
      );
      stats.add(deep && outcome !== 'enrollAccepted' ? `${outcome} (real answer)` : outcome);
      usedIds.push(base.requestId as string);
      if (usedIds.length > 64) usedIds.shift();
      const after = await inventoryDigest(inventory);
      if (outcome === 'enrollAccepted') digest = after;
      else if (after !== digest) fail(a, `the inventory changed after ${outcome}`, logger);
    }
    stats.finish();
    console.log(stats.line());
    expect(stats.rssGrowthMb).toBeLessThan(RSS_BOUND_MB);
  }, TIMEOUT);
});
