import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../common/clock.js';
import { decode, encode } from '../../common/protocol/messages.js';
import { Topics } from '../../common/protocol/topics.js';
import { LevelInventory } from '../../broker-bridge/src/inventory/level-inventory.js';
import { IngestService } from '../../broker-bridge/src/telemetry/ingest-service.js';
import { CapturingLogger, inventoryDigest, wire } from './fleet.js';
import { malformed, mutate, newId, type WireMessage } from './mutators.js';
import { RSS_BOUND_MB, RunStats, fail, foreignTopic, type Attempt } from './oracle.js';
import { Rng, fuzzRuns, fuzzSeed } from './prng.js';

/**
 * Fuzzes the bridge's IngestService (`devices/<id>/status` and `devices/<id>/events`), called directly
 * with a real LevelInventory. The oracle: `handle` never throws; it answers exactly the valid events
 * of known devices, with an acknowledgment of that event's id on that device's `events/ack` topic, and
 * nothing else; nothing is logged as an error; every warning carries a schema code, DEVICE_ID_MISMATCH
 * or is the unknown-device drop (any other code would be an internal failure on device input); and a
 * message that is not a valid status/event of a known device (by the protocol schema, the topic's
 * device id, and the device being registered) leaves the inventory digest unchanged: fuzzed malformed
 * input is never recorded. Valid mutations may be recorded (counted as `recorded`).
 *
 * No TPM or CA is needed: ingest reads only the device record, so devices are registered and
 * enrolled as inventory records.
 */
const RUNS = fuzzRuns(300);
const SEED = fuzzSeed();
/** vitest's 60 s default is for the small run; `npm run fuzz` (10 000 runs) needs longer. */
const TIMEOUT = 60_000 + RUNS * 40;
const SCHEMA_CODES = new Set(['SCHEMA_TOO_LARGE', 'SCHEMA_NOT_JSON', 'SCHEMA_INVALID', 'DEVICE_ID_MISMATCH']);

describe('fuzz: ingest handler', () => {
  const topics = new Topics('fleet/v1');
  const T0 = Date.UTC(2026, 0, 1);
  const clock = new ManualClock(T0);
  const logger = new CapturingLogger();
  let dir: string;
  let inventory: LevelInventory;
  let ingest: IngestService;
  let captured: { status: WireMessage; event: WireMessage };

  let generation = 0;
  /**
   * A fresh inventory with the devices, and the captured status and event recorded once. Renewed
   * every 1000 runs: the digest reads the whole event history and audit, which would otherwise make a
   * 10 000-run fuzz quadratic.
   */
  async function freshInventory(): Promise<void> {
    await inventory?.close();
    inventory = new LevelInventory(join(dir, `inventory-${generation++}`));
    await inventory.open();
    // Warn on every drop (no per-device throttling): the oracle reads every warning.
    ingest = new IngestService({ inventory, clock, topics, logger, warnIntervalMs: 0 });
    for (const [deviceId, serial] of [['dev-ing', 'aa01'], ['dev-two', 'bb01']] as const) {
      await inventory.registerDevice(
        { deviceId, ekPublicHash: 'ek-' + deviceId, ekCertificate: 'AAAA', ekKind: 'ecc', metadata: {}, registeredAt: T0 },
        { tokenHash: 'tok-' + deviceId, deviceId, ekPublicHash: 'ek-' + deviceId, createdAt: T0, expiresAt: T0 + 1000 },
      );
      await inventory.completeEnrollment({
        tokenHash: 'tok-' + deviceId,
        requestId: 'enroll-' + deviceId,
        deviceId,
        akName: '000b' + '11'.repeat(32),
        certificate: { serial, deviceId, notBefore: T0, notAfter: T0 + 86_400_000, issuedAt: T0, pem: 'PEM', keySpkiHash: 'k-' + serial },
        response: { requestId: 'enroll-' + deviceId, deviceId, topic: 't', payload: 'AA==', storedAt: T0 },
        audit: [],
        at: T0,
      });
    }
    await inventory.registerDevice({ deviceId: 'dev-new', ekPublicHash: 'ek-new', ekCertificate: 'AAAA', ekKind: 'ecc', metadata: {}, registeredAt: T0 });
    // Captured once: what the agent publishes, recorded by the service.
    const status = encode('status', 'status-0001-captured', T0, {
      deviceId: 'dev-ing',
      online: true,
      state: 'online',
      certSerial: 'aa01',
      certNotAfter: T0 + 86_400_000,
      slot: 'A',
      lastRotationAt: T0,
      lastRotationResult: 'ok',
      clockSkewMs: 0,
      agentVersion: '0.1.0',
      tpmManufacturer: 'IBM',
      tpmFirmware: '1.2',
      outboxPending: 0,
      outboxDropped: 0,
    });
    const event = encode('events', 'event-0001-captured', T0, { type: 'rotated', at: T0, seq: 1, serial: 'aa02', previousSerial: 'aa01', slot: 'B' });
    await ingest.handle(topics.device('dev-ing', 'status'), status);
    await ingest.handle(topics.device('dev-ing', 'events'), event);
    expect(inventory.getDevice('dev-ing')?.status).toMatchObject({ state: 'online', certSerial: 'aa01' });
    expect((await inventory.listDeviceEvents('dev-ing')).map((e) => e.id)).toEqual(['event-0001-captured']);
    captured = { status: wire(status) as WireMessage, event: wire(event) as WireMessage };
    logger.clear();
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fuzz-ingest-'));
    await freshInventory();
  });
  afterAll(async () => {
    await inventory?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** Whether the service may record this message (else it must leave the inventory as it was). */
  function recordable(topic: string, payload: Buffer): boolean {
    const parsed = topics.parseDevice(topic);
    if (!parsed || (parsed.topic !== 'status' && parsed.topic !== 'events')) return false;
    if (!inventory.getDevice(parsed.deviceId)) return false;
    try {
      if (parsed.topic === 'status') return payload.length > 0 && decode('status', payload).body.deviceId === parsed.deviceId;
      decode('events', payload);
      return true;
    } catch {
      return false;
    }
  }

  for (const kind of ['status', 'events'] as const) {
    it(`${kind}: ${RUNS} fuzzed messages are dropped with a schema code or recorded when valid; malformed ones never change the inventory`, async () => {
      const rng = new Rng(SEED ^ (kind === 'status' ? 0x66 : 0x77));
      const stats = new RunStats(kind, SEED, RUNS);
      const others = [captured.status, captured.event];
      const usedIds: string[] = ['event-0001-captured'];
      let digest = await inventoryDigest(inventory);
      let seq = 2;
      for (let run = 0; run < RUNS; run++) {
        if (run > 0 && run % 1000 === 0) {
          await freshInventory();
          digest = await inventoryDigest(inventory);
        }
        const base = JSON.parse(JSON.stringify(kind === 'status' ? captured.status : captured.event)) as WireMessage;
        base.requestId = newId(rng);
        const own = rng.chance(0.85) ? 'dev-ing' : rng.pick(['dev-two', 'dev-new', 'ghost']);
        const body = base.body as Record<string, unknown>;
        if (kind === 'status') {
          body.deviceId = own;
          body.state = rng.pick(['online', 'rotating', 'error', 'offline']);
        } else body.seq = seq++;
        const r = rng.next();
        const input = r < 0.45 ? malformed(rng, base, kind === 'status' ? 4 * 1024 : 2 * 1024) : mutate(rng, base, others, usedIds);
        const t = rng.next();
        const topic = t < 0.95 ? topics.device(own, kind) : foreignTopic(rng, topics.base, kind);
        const retain = kind === 'status' && rng.chance(0.3);
        const a: Attempt = { handler: kind, seed: SEED, run, ...input, label: `${input.label}${retain ? ' (retained)' : ''}`, topic };
        const mayRecord = recordable(topic, input.payload);
        logger.clear();
        clock.advance(rng.int(5000));
        let reply;
        try {
          reply = await ingest.handle(topic, input.payload, { retain });
        } catch (e) {
          fail(a, `handle threw: ${(e as Error).stack ?? String(e)}`, logger);
        }
        const target = topics.parseDevice(topic);
        if (mayRecord && target?.topic === 'events') {
          if (reply?.topic !== topics.device(target.deviceId, 'eventsAck')) fail(a, `a valid event was not acknowledged (reply on ${String(reply?.topic)})`, logger);
          else if (decode('eventsAck', reply.payload).requestId !== (JSON.parse(input.payload.toString()) as { requestId: string }).requestId) fail(a, 'the acknowledgment names another event', logger);
        } else if (reply !== undefined) fail(a, `ingest answered on ${reply.topic}`, logger);
        if (logger.errors.length > 0) fail(a, 'the handler logged an error', logger);
        for (const w of logger.warnings) {
          const code = w.obj.code as string | undefined;
          const unknownDevice = code === undefined && w.msg.includes('does not know');
          if (!unknownDevice && !SCHEMA_CODES.has(code ?? '')) fail(a, `dropped with code ${String(code)}: ${w.msg}`, logger);
          if (mayRecord && !(code === undefined && unknownDevice)) fail(a, `a valid message was dropped (${String(code)}: ${w.msg})`, logger);
        }
        const after = await inventoryDigest(inventory);
        const changed = after !== digest;
        if (changed && !mayRecord) fail(a, 'malformed input changed the inventory', logger);
        stats.add(topics.parseDevice(topic)?.topic !== kind ? 'ignored (foreign topic)' : mayRecord ? (changed ? 'recorded' : 'valid, nothing new') : `dropped ${String(logger.warnings[0]?.obj.code ?? 'unknown device')}`);
        digest = after;
        usedIds.push(base.requestId as string);
        if (usedIds.length > 64) usedIds.shift();
      }
      stats.finish();
      console.log(stats.line());
      expect(stats.rssGrowthMb).toBeLessThan(RSS_BOUND_MB);
      expect(stats.codes.get('recorded') ?? 0).toBeGreaterThan(0);
    }, TIMEOUT);
  }
});
