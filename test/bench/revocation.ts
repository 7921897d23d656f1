/**
 * `npm run bench:revocation`: revocation end to end (issue 7, "Benchmark"), against a real fleet
 * (mosquitto with the generated config, bridge, CA, LevelDB inventory) and real agents, each on its own
 * freshly manufactured swtpm, all in this one process.
 * 1. Lookup (device side, in-process, real components), run first while no agent is up, so that the
 *    200 agents' heaps and timers do not disturb it: the fleet's issuing CA (CrlSigner on
 *    fx.fleet.ca.backend) signs a complete CRL of BENCH_REVOKED_SERIALS (100,000) random 128-bit
 *    serials; it is cut into part messages (encodeCrlParts), fed through a CrlFeed into a
 *    RevocationCache over a real LevelDB and accepted (parse, signature, index, persist), all timed;
 *    then a delta with one new entry against it (baseCrlNumber) is accepted too, and 200,000
 *    `status()` lookups (half revoked, half not, in random spellings: upper case, leading zeros) are
 *    timed one by one with process.hrtime.bigint → p50/p99. Baseline in the same run: `Set.has` on the
 *    same keys, normalized beforehand, timed the same way. fullCrlBytes / deltaCrlBytes are the DER
 *    sizes of that complete CRL and that delta.
 * 2. Fleet: BENCH_DEVICES (200) agents with the shipped runtime defaults: first every swtpm is
 *    manufactured and started, then each device is registered and its agent enrolls,
 *    BENCH_SETUP_PARALLEL (4) at a time; all online, each holding the fleet's CRL.
 * 3. Revocations, BENCH_REVOCATIONS (10) times: a probe device (software key, certificate from the
 *    fleet's issuing CA, enrolled in the inventory) connected with mqtt.js (MQTT 5) publishes QoS1 on
 *    its own status topic every ~20 ms; at t0 `fx.fleet.revokeDevice(probe, 'keyCompromise')`; then
 *    - sessionCut: t0 until the probe's first PUBACK 0x87 (the broker stripped its rights);
 *    - propagation: for every online agent, t0 until `agent.status().crl.crlNumber` reaches the new
 *      number (the agent verified and stored it), polled every BENCH_POLL_MS (5) ms in-process.
 *    propagationP99Ms is the p99 over all (revocation × agent) samples; sessionCutMs the max over
 *    revocations. Baseline in the same run: a plain mqtt.js client publishes a retained QoS1 message
 *    of the delta message's size, and as many plain mqtt.js subscribers as there are agents receive
 *    it (time from the publish call to each receipt, event-driven, no polling).
 * What is measured where: the fleet phase's base CRL is the fleet's real one (a new fleet's: empty at
 * the start), while the 100,000-serial figures come from the lookup phase. A 100,000-serial complete
 * CRL is ~5 MB of DER (fullCrlBytes); sent to 200 agents in one process that is ~1 GB of fan-out, and
 * every agent would keep its own copies (parts, DER, stored record, index) in this one heap, which
 * measures the harness, not a device. What each revocation sends devices is the delta, whose size does
 * not depend on the base's (it lists the revocations since the base).
 * In this process the bridge (which signs, publishes and then reloads the broker) shares one event loop
 * with every agent, so with many agents the session cut also waits for the agents' CRL handling; the
 * table shows the event-loop delay and the CPU used in the phase. BENCH_CPU_PROFILE=<file> writes a V8
 * CPU profile of the revocations phase.
 * Ends with one JSON line.
 */
import { spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Level } from 'level';
import mqtt, { type MqttClient } from 'mqtt';
import { DEFAULT_AGENT_CONFIG } from '../../agent/src/agent-config.js';
import type { Agent } from '../../agent/src/agent.js';
import { CrlFeed } from '../../agent/src/crl-feed.js';
import { RevocationCache, normalizeSerial } from '../../agent/src/revocation-cache.js';
import { DEFAULT_AUDITOR } from '../../broker-bridge/src/embedded-fleet.js';
import { CrlSigner, type RevokedCertificate } from '../../broker-bridge/src/ca/crl.js';
import { systemClock } from '../../common/clock.js';
import { encodeCrlParts } from '../../common/protocol/crl.js';
import { startTpm, stopAll } from '../harness/index.js';
import { eventually, startFleetFixture, type FleetFixture } from '../agent/fleet-fixture.js';
import { percentile, round } from './stats.js';

const DEVICES = Number(process.env['BENCH_DEVICES'] ?? 200);
const REVOCATIONS = Number(process.env['BENCH_REVOCATIONS'] ?? 10);
const REVOKED_SERIALS = Number(process.env['BENCH_REVOKED_SERIALS'] ?? 100_000);
const LOOKUPS = Number(process.env['BENCH_LOOKUPS'] ?? 200_000);
const SETUP_PARALLEL = Number(process.env['BENCH_SETUP_PARALLEL'] ?? 4);
const POLL_MS = Number(process.env['BENCH_POLL_MS'] ?? 5);
/** Where to write a V8 CPU profile of the revocations phase alone (Chrome DevTools format); none when unset. */
const CPU_PROFILE = process.env['BENCH_CPU_PROFILE'];
const PROBE_INTERVAL_MS = 20;
/** Longest wait for one revocation's effects before it counts as missed. */
const PHASE_TIMEOUT_MS = 30_000;

const TARGET = { propagationP99Ms: 2_000, sessionCutMs: 2_000, lookupP99Us: 50 };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const hrUs = (from: bigint, to: bigint) => Number(to - from) / 1e3;
const log = (m: string) => process.stderr.write(`[bench:revocation] ${m}\n`);

/** Runs `fn` over `items`, at most `limit` at a time, results in order. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

// --- 1. Lookup -----------------------------------------------------------------------------------

interface LookupResult {
  fullCrlBytes: number;
  deltaCrlBytes: number;
  parts: number;
  signMs: number;
  feedMs: number;
  acceptMs: number;
  deltaAcceptMs: number;
  reopenMs: number;
  lookupP50Us: number;
  lookupP99Us: number;
  setHasP50Us: number;
  setHasP99Us: number;
}

/** A random 128-bit serial as CrlSigner writes it (lowercase hex, no leading zeros, never zero). */
function randomSerial(): string {
  return normalizeSerial(randomBytes(16).toString('hex'));
}

/** The same serial as a peer certificate might spell it. */
function respell(serial: string): string {
  switch (randomInt(4)) {
    case 0:
      return serial.toUpperCase();
    case 1:
      return '00' + serial;
    case 2:
      return '0' + serial.toUpperCase();
    default:
      return serial;
  }
}

async function lookupPhase(fx: FleetFixture): Promise<LookupResult> {
  const signer = new CrlSigner({ backend: fx.fleet.ca.backend, issuingCertificate: fx.fleet.ca.issuingCertificatePem, clock: systemClock });
  const issuers = [fx.fleet.ca.issuingCertificatePem, fx.fleet.ca.rootCertificatePem];
  const revokedSet = new Set<string>();
  while (revokedSet.size < REVOKED_SERIALS) revokedSet.add(randomSerial());
  const revokedAt = new Date(Date.now() - 60_000);
  const revoked: RevokedCertificate[] = [...revokedSet].map((serialNumber, i) => ({ serialNumber, revokedAt, reason: i % 3 === 0 ? 'keyCompromise' : 'superseded' }));
  // Numbers of this phase's own sequence (the cache is the only reader); the fleet's is left alone.
  const baseNumber = 1_000_000n;

  let t = performance.now();
  const full = await signer.sign({ crlNumber: baseNumber, nextUpdateSec: 86_400, revoked });
  const signMs = performance.now() - t;
  const parts = encodeCrlParts({ crlNumber: baseNumber, der: full.crlDer });

  const dir = mkdtempSync(join(tmpdir(), 'bench-revocation-cache-'));
  const level = new Level<string, unknown>(dir, { valueEncoding: 'json' });
  await level.open();
  try {
    const sub = () => level.sublevel<string, unknown>('revocation', { valueEncoding: 'json' });
    let cache = new RevocationCache(sub(), { clock: systemClock, graceSec: DEFAULT_AGENT_CONFIG.revocation.graceSec });
    await cache.open();

    // Parts in, DER out (decode, base64, join, digest), as the agent receives them.
    const feed = new CrlFeed({ topics: fx.fleet.topics });
    t = performance.now();
    let ready: Buffer[] | undefined;
    for (const [i, p] of parts.entries()) {
      const r = feed.push(fx.fleet.topics.crlPart(i), p);
      if (r.kind === 'invalid') throw new Error(`CrlFeed refused part ${i}: ${r.code} ${r.reason}`);
      if (r.kind === 'ready') ready = r.crls;
    }
    const feedMs = performance.now() - t;
    if (ready?.length !== 1 || !ready[0]!.equals(full.crlDer)) throw new Error('CrlFeed did not yield the complete CRL');

    t = performance.now();
    const accepted = await cache.accept(ready[0]!, issuers);
    const acceptMs = performance.now() - t;
    if (!accepted.accepted) throw new Error(`RevocationCache refused the complete CRL: ${accepted.code} ${accepted.reason}`);

    const added = randomSerial();
    const delta = await signer.sign({ crlNumber: baseNumber + 1n, baseCrlNumber: baseNumber, nextUpdateSec: 86_400, revoked: [{ serialNumber: added, revokedAt: new Date(), reason: 'keyCompromise' }] });
    t = performance.now();
    const deltaAccepted = await cache.accept(delta.crlDer, issuers);
    const deltaAcceptMs = performance.now() - t;
    if (!deltaAccepted.accepted) throw new Error(`RevocationCache refused the delta: ${deltaAccepted.code} ${deltaAccepted.reason}`);
    revokedSet.add(added);

    // A restart: the index is rebuilt from LevelDB (no DER parse, no signature check).
    await cache.close();
    cache = new RevocationCache(sub(), { clock: systemClock, graceSec: DEFAULT_AGENT_CONFIG.revocation.graceSec });
    t = performance.now();
    if ((await cache.open()) !== 'loaded') throw new Error('the reopened cache did not load the stored CRLs');
    const reopenMs = performance.now() - t;
    if (cache.size() !== REVOKED_SERIALS + 1 || cache.crlNumber() !== baseNumber + 1n) throw new Error(`the reopened cache holds ${cache.size()} serials, CRL ${cache.crlNumber()}`);

    // Queries: half revoked (the delta's serial among them), half not, in random spellings.
    const pool = [...revokedSet];
    const queries: { spelled: string; key: string; revoked: boolean }[] = [];
    for (let i = 0; i < LOOKUPS; i++) {
      const isRevoked = i % 2 === 0;
      let key: string;
      if (!isRevoked) do key = randomSerial(); while (revokedSet.has(key));
      else key = i === 0 ? added : pool[randomInt(pool.length)]!;
      queries.push({ spelled: respell(key), key, revoked: isRevoked });
    }
    for (let i = queries.length - 1; i > 0; i--) {
      const j = randomInt(i + 1);
      [queries[i], queries[j]] = [queries[j]!, queries[i]!];
    }

    const now = Date.now();
    const lookup = new Array<number>(queries.length);
    let wrong = 0;
    for (const [i, q] of queries.entries()) {
      const a = process.hrtime.bigint();
      const s = cache.status(q.spelled, now);
      const b = process.hrtime.bigint();
      lookup[i] = hrUs(a, b);
      if (s.revoked !== q.revoked || s.freshness !== 'fresh') wrong++;
    }
    if (wrong > 0) throw new Error(`${wrong} of ${queries.length} lookups answered wrong`);

    const baseline = new Array<number>(queries.length);
    let hits = 0;
    for (const [i, q] of queries.entries()) {
      const a = process.hrtime.bigint();
      const has = revokedSet.has(q.key);
      const b = process.hrtime.bigint();
      baseline[i] = hrUs(a, b);
      if (has) hits++;
    }
    if (hits !== queries.filter((q) => q.revoked).length) throw new Error('the Set.has baseline answered wrong');
    await cache.close();

    return {
      fullCrlBytes: full.crlDer.length,
      deltaCrlBytes: delta.crlDer.length,
      parts: parts.length,
      signMs,
      feedMs,
      acceptMs,
      deltaAcceptMs,
      reopenMs,
      lookupP50Us: percentile(lookup, 50),
      lookupP99Us: percentile(lookup, 99),
      setHasP50Us: percentile(baseline, 50),
      setHasP99Us: percentile(baseline, 99),
    };
  } finally {
    await level.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

// --- 2./3. Fleet and revocations -------------------------------------------------------------------

/** A device with a software key and a certificate from the fleet's issuing CA, enrolled in the inventory. */
async function registerProbe(fx: FleetFixture, id: string): Promise<{ certPem: string; keyPem: string }> {
  const c = await fx.fleet.clientCertificate(id);
  const now = Date.now();
  await fx.fleet.inventory.registerDevice(
    { deviceId: id, ekPublicHash: `ek-${id}`, ekCertificate: 'AAAA', ekKind: 'ecc', metadata: {}, registeredAt: now },
    { tokenHash: `tok-${id}`, deviceId: id, ekPublicHash: `ek-${id}`, createdAt: now, expiresAt: now + 60_000 },
  );
  await fx.fleet.inventory.completeEnrollment({
    tokenHash: `tok-${id}`,
    requestId: `req-${id}`,
    deviceId: id,
    akName: '000b' + 'aa'.repeat(32),
    certificate: { serial: c.serialNumber, deviceId: id, notBefore: now - 300_000, notAfter: now + 86_400_000, issuedAt: now, pem: c.certPem, keySpkiHash: 'k' },
    response: { requestId: `req-${id}`, deviceId: id, topic: 't', payload: 'cA==', storedAt: now },
    audit: [],
    at: now,
  });
  return c;
}

/** A plain mqtt.js MQTT 5 client on the device listener, Nagle off (see shared FACTS). */
async function plainClient(fx: FleetFixture, tls: { certPem: string; keyPem: string }): Promise<MqttClient> {
  const c = await mqtt.connectAsync(fx.fleet.broker.deviceUrl, {
    clientId: `enr-${randomBytes(6).toString('hex')}`,
    protocolVersion: 5,
    ca: fx.fleet.ca.rootCertificatePem,
    cert: tls.certPem,
    key: tls.keyPem,
    reconnectPeriod: 0,
    connectTimeout: 10_000,
  });
  (c.stream as { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true);
  return c;
}

/** PUBACK reason code of a QoS1 publish (0 = accepted, 0x87 = not authorized). */
async function pubackCode(c: MqttClient, topic: string, payload: string): Promise<number> {
  try {
    await c.publishAsync(topic, payload, { qos: 1 });
    return 0;
  } catch (e) {
    // mqtt.js rejects a PUBACK with a reason code ≥ 0x80 with an error carrying that code.
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'number') return code;
    throw e;
  }
}

interface RevocationSample {
  /** Per online agent: t0 until it holds the new CRL (NaN when it did not within the timeout). */
  readonly perAgent: number[];
  /** t0 until the probe's first PUBACK 0x87 (NaN when none came within the timeout). */
  readonly cutMs: number;
  /** t0 until revokeDevice() resolved (inventory, CRL signed, published, broker files + SIGHUP). */
  readonly commandMs: number;
  /** t0 until mosquitto_sub (own process) received the new delta: the fleet side's share (NaN without mosquitto_sub). */
  readonly deltaOnWireMs: number;
}

/**
 * Arrival times of delta messages by CRL number (on the performance.now() scale), as seen by
 * mosquitto_sub in a process of its own with an auditor certificate: the moment the delta was on the
 * wire. An in-process subscriber would read it only after the agents' handlers, which share this
 * event loop, have run. Started before any TPM connection is open (see the set-up); undefined when
 * mosquitto_sub is not installed.
 */
async function watchDeltasOutOfProcess(fx: FleetFixture): Promise<{ seen: Map<bigint, number>; stop(): void } | undefined> {
  const tls = await fx.fleet.clientCertificate(DEFAULT_AUDITOR);
  const dir = join(fx.dir, 'delta-watch');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'ca.pem'), fx.fleet.ca.rootCertificatePem);
  writeFileSync(join(dir, 'cert.pem'), tls.certPem);
  writeFileSync(join(dir, 'key.pem'), tls.keyPem, { mode: 0o600 });
  const url = new URL(fx.fleet.broker.deviceUrl);
  const child = spawn('mosquitto_sub', [
    '-h', url.hostname, '-p', url.port, '--cafile', join(dir, 'ca.pem'), '--cert', join(dir, 'cert.pem'), '--key', join(dir, 'key.pem'),
    '-i', `enr-bench-watch-${randomBytes(4).toString('hex')}`, '-V', 'mqttv5', '-q', '1', '-t', fx.fleet.topics.fleet('crlDelta'),
    // Receive time (epoch seconds and nanoseconds), then the payload.
    '-F', '@s @N %p',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  const seen = new Map<bigint, number>();
  let stderr = '';
  let failed = false;
  child.once('error', () => (failed = true));
  child.stderr.on('data', (b: Buffer) => (stderr = (stderr + b.toString()).slice(-2_000)));
  let buffered = '';
  child.stdout.on('data', (b: Buffer) => {
    buffered += b.toString();
    for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      const m = /^(\d+) (\d+) (\{.*\})$/.exec(line);
      if (!m) continue;
      const wallMs = Number(m[1]) * 1000 + Number(m[2]) / 1e6;
      const n = BigInt((JSON.parse(m[3]!) as { crlNumber: string }).crlNumber);
      if (!seen.has(n)) seen.set(n, wallMs - performance.timeOrigin);
    }
  });
  const stop = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill();
  };
  process.once('exit', stop);
  // Connected once the retained delta (or, on a new fleet, nothing) has had time to arrive.
  await sleep(1_000);
  if (failed || child.exitCode !== null) {
    log(`mosquitto_sub could not watch the delta topic (${failed ? 'not installed' : `exit ${child.exitCode}: ${stderr.trim()}`}); no on-the-wire times`);
    return undefined;
  }
  return { seen, stop };
}

async function revokeOnce(fx: FleetFixture, agents: readonly Agent[], probeId: string, deltas: ReadonlyMap<bigint, number> | undefined): Promise<RevocationSample> {
  const probe = await plainClient(fx, await registerProbe(fx, probeId));
  try {
    const topic = fx.fleet.topics.device(probeId, 'status');
    const acks: { at: number; code: number }[] = [];
    let probing = true;
    let probeError: unknown;
    const probeLoop = (async () => {
      for (let i = 0; probing; i++) {
        const code = await pubackCode(probe, topic, `probe-${i}`);
        acks.push({ at: performance.now(), code });
        if (code !== 0) return;
        await sleep(PROBE_INTERVAL_MS);
      }
    })().catch((e: unknown) => {
      probeError = e;
    });
    await eventually(() => acks.length >= 2 || probeError !== undefined, 10_000, `${probeId} publishing`);
    if (acks.some((a) => a.code !== 0)) throw new Error(`${probeId} was refused before its revocation`);

    const target = fx.fleet.revocation.current!.crlNumber + 1n;
    const perAgent = new Array<number>(agents.length).fill(Number.NaN);
    const t0 = performance.now();
    let commandMs = Number.NaN;
    const command = fx.fleet.revokeDevice(probeId, 'keyCompromise').then((r) => {
      commandMs = performance.now() - t0;
      return r;
    });
    const pending = new Set(agents.keys());
    while (pending.size > 0 && performance.now() - t0 < PHASE_TIMEOUT_MS) {
      for (const i of pending) {
        const n = agents[i]!.status().crl?.crlNumber;
        if (n !== undefined && BigInt(n) >= target) {
          perAgent[i] = performance.now() - t0;
          pending.delete(i);
        }
      }
      if (pending.size > 0) await sleep(POLL_MS);
    }
    const result = await command;
    if (result.crlNumber !== target) throw new Error(`revocation of ${probeId} signed CRL ${result.crlNumber}, expected ${target} (something else reissued meanwhile)`);
    if (!result.enforced) throw new Error(`revocation of ${probeId}: the broker files were not updated`);

    await eventually(() => acks.at(-1)!.code !== 0 || probeError !== undefined || performance.now() - t0 > PHASE_TIMEOUT_MS, PHASE_TIMEOUT_MS + 5_000, `${probeId} cut`);
    probing = false;
    await probeLoop;
    if (probeError !== undefined) throw new Error(`${probeId}: the probe's publish failed`, { cause: probeError });
    const last = acks.at(-1)!;
    if (last.code !== 0 && last.code !== 0x87) throw new Error(`${probeId}: PUBACK reason ${last.code}, expected 0x87`);
    const cutMs = last.code === 0x87 ? last.at - t0 : Number.NaN;
    if (deltas) await eventually(() => deltas.has(target), 5_000, `delta ${target} seen by mosquitto_sub`);
    return { perAgent, cutMs, commandMs, deltaOnWireMs: deltas ? deltas.get(target)! - t0 : Number.NaN };
  } finally {
    await probe.endAsync(true).catch(() => undefined);
  }
}

/** Plain mqtt.js fan-out: one retained QoS1 publish of `bytes` to `subscribers` plain subscribers. */
async function baselineFanOut(fx: FleetFixture, subscriberIds: readonly string[], bytes: number): Promise<number[]> {
  const pubId = 'bench-rev-baseline-pub';
  const topic = fx.fleet.topics.device(pubId, 'status');
  const publisher = await plainClient(fx, await fx.fleet.clientCertificate(pubId));
  const subs: MqttClient[] = [];
  try {
    const tls = await mapLimit(subscriberIds, 8, (id) => fx.fleet.clientCertificate(id));
    subs.push(...(await mapLimit(tls, 8, (t) => plainClient(fx, t))));
    let current = -1;
    let t0 = 0;
    let got = new Array<number>(subs.length).fill(Number.NaN);
    for (const [i, s] of subs.entries()) {
      s.on('message', (_topic, payload) => {
        if (payload.subarray(0, 12).toString() === `round-${String(current).padStart(6, '0')}` && Number.isNaN(got[i]!)) got[i] = performance.now() - t0;
      });
    }
    await Promise.all(subs.map((s) => s.subscribeAsync(topic, { qos: 1 })));
    const samples: number[] = [];
    for (let r = 0; r < REVOCATIONS; r++) {
      current = r;
      got = new Array<number>(subs.length).fill(Number.NaN);
      const payload = Buffer.alloc(bytes, 'x');
      payload.write(`round-${String(r).padStart(6, '0')}`);
      t0 = performance.now();
      await publisher.publishAsync(topic, payload, { qos: 1, retain: true });
      await eventually(() => got.every((v) => !Number.isNaN(v)) || performance.now() - t0 > PHASE_TIMEOUT_MS, PHASE_TIMEOUT_MS + 5_000, 'baseline fan-out');
      samples.push(...got);
      await sleep(200);
    }
    // Leave no retained message behind.
    await publisher.publishAsync(topic, Buffer.alloc(0), { qos: 1, retain: true });
    return samples;
  } finally {
    await Promise.all([publisher, ...subs].map((c) => c.endAsync(true).catch(() => undefined)));
  }
}

/** CPU time (user + system, ms) of a process so far, from /proc; NaN when it cannot be read. */
function processCpuMs(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  try {
    // Fields after the command name (which may contain spaces): utime and stime are fields 14 and 15.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // USER_HZ is 100 on Linux
  } catch {
    return Number.NaN;
  }
}

// --- main ----------------------------------------------------------------------------------------

const fmt = (v: number, digits = 1) => (Number.isFinite(v) ? String(round(v, digits)) : 'n/a');
const verdict = (ok: boolean) => (ok ? 'PASS' : 'FAIL');

/** Stops agents, fleet and every swtpm/mosquitto the harness started; once, whoever asks first. */
let cleanup: () => Promise<void> = () => stopAll();

async function main(): Promise<void> {
  const baselineSubscribers = Array.from({ length: DEVICES }, (_, i) => `role:auditor:bench-${i}`);
  const fx = await startFleetFixture({ auditorIdentities: [DEFAULT_AUDITOR, ...baselineSubscribers] });
  let cleaned: Promise<void> | undefined;
  let stopWatcher = () => {};
  cleanup = () =>
    (cleaned ??= (async () => {
      stopWatcher();
      await fx.stop().catch((e: unknown) => log(`fleet stop failed: ${(e as Error).message}`));
      await stopAll();
    })());
  try {
    // A child process, so before any TPM connection is opened (see the set-up).
    const watcher = await watchDeltasOutOfProcess(fx);
    if (watcher) stopWatcher = watcher.stop;
    log(`lookup phase: ${REVOKED_SERIALS} revoked serials, ${LOOKUPS} lookups`);
    const lk = await lookupPhase(fx);

    log(`fleet phase: ${DEVICES} agents, ${SETUP_PARALLEL} set up at a time`);
    const setupStart = performance.now();
    const ids = Array.from({ length: DEVICES }, (_, i) => `bench-rev-${String(i).padStart(4, '0')}`);
    // Every swtpm is manufactured and started before any TPM connection is opened. libtss2's TCTI opens
    // its socket without close-on-exec (native/src/context.cc marks it right after, on a pool thread):
    // a child spawned in that window inherits the connection, and that swtpm, which serves one
    // connection at a time, then waits on it forever. With spawns and opens interleaved 4 at a time,
    // that hung the set-up.
    const tpms = await mapLimit(ids, SETUP_PARALLEL, async () => startTpm());
    const tpmMs = performance.now() - setupStart;
    log(`${DEVICES} swtpms manufactured and started after ${Math.round(tpmMs / 1000)} s`);
    let online = 0;
    const agents = await mapLimit(ids, SETUP_PARALLEL, async (id, i) => {
      const bootstrap = await fx.provision(id, tpms[i]!);
      // The shipped runtime defaults (30 s tick, 1 s backoff base), not the tests' quick ones.
      const a = fx.agent({ bootstrap, dataDir: join(fx.dir, 'devices', id) }, { config: DEFAULT_AGENT_CONFIG });
      await a.start();
      if (++online % 25 === 0) log(`${online}/${DEVICES} online after ${Math.round((performance.now() - setupStart) / 1000)} s`);
      return a;
    });
    const setupMs = performance.now() - setupStart;
    const initial = fx.fleet.revocation.current!.crlNumber.toString();
    await eventually(() => agents.every((a) => a.state === 'online' && a.status().crl?.crlNumber === initial), 60_000, `every agent holding CRL ${initial}`);
    const baseSerials = fx.fleet.revocation.devices!.base.size;
    log(`${DEVICES} agents online holding CRL ${initial} after ${Math.round(setupMs / 1000)} s`);

    const samples: RevocationSample[] = [];
    const profiler = CPU_PROFILE ? new Session() : undefined;
    if (profiler) {
      profiler.connect();
      await profiler.post('Profiler.enable');
      await profiler.post('Profiler.start');
    }
    const loopDelay = monitorEventLoopDelay({ resolution: 10 });
    loopDelay.enable();
    const phaseStart = performance.now();
    const cpuStart = process.cpuUsage();
    const brokerCpuStart = processCpuMs(fx.fleet.broker.pid);
    for (let r = 0; r < REVOCATIONS; r++) {
      const s = await revokeOnce(fx, agents, `bench-rev-probe-${r}`, watcher?.seen);
      samples.push(s);
      log(`revocation ${r + 1}/${REVOCATIONS}: cut ${fmt(s.cutMs)} ms, propagation p99 ${fmt(percentile(s.perAgent.map((v) => (Number.isNaN(v) ? Infinity : v)), 99))} ms`);
      await sleep(200);
    }
    const phaseMs = performance.now() - phaseStart;
    loopDelay.disable();
    const cpu = process.cpuUsage(cpuStart);
    const nodeCpuMs = (cpu.user + cpu.system) / 1000;
    const brokerCpuMs = processCpuMs(fx.fleet.broker.pid) - brokerCpuStart;
    if (profiler) {
      const { profile } = await profiler.post('Profiler.stop');
      writeFileSync(CPU_PROFILE!, JSON.stringify(profile));
      profiler.disconnect();
      log(`CPU profile of the revocations phase written to ${CPU_PROFILE}`);
    }
    watcher?.stop();
    const deltaMessageBytes = fx.fleet.revocation.devices!.deltaPayload.length;
    const stillOnline = agents.filter((a) => a.state === 'online').length;

    log(`baseline: plain mqtt.js fan-out to ${baselineSubscribers.length} subscribers`);
    const baseline = await baselineFanOut(fx, baselineSubscribers, deltaMessageBytes);

    // A sample that never arrived counts as infinitely late (it fails the target, never improves it).
    const late = (v: number) => (Number.isNaN(v) ? Infinity : v);
    const propagation = samples.flatMap((s) => s.perAgent.map(late));
    const missed = propagation.filter((v) => v === Infinity).length;
    const cuts = samples.map((s) => late(s.cutMs));
    const baselineMs = baseline.map(late);
    const commands = samples.map((s) => s.commandMs);
    const onWire = samples.map((s) => s.deltaOnWireMs);

    const result = {
      bench: 'revocation',
      devices: DEVICES,
      propagationP99Ms: round(percentile(propagation, 99), 1),
      sessionCutMs: round(Math.max(...cuts), 1),
      lookupP99Us: round(lk.lookupP99Us, 2),
      revokedSerials: REVOKED_SERIALS,
      fullCrlBytes: lk.fullCrlBytes,
      deltaCrlBytes: lk.deltaCrlBytes,
      revocations: REVOCATIONS,
      propagationP50Ms: round(percentile(propagation, 50), 1),
      propagationMaxMs: round(Math.max(...propagation), 1),
      propagationMissed: missed,
      pollMs: POLL_MS,
      sessionCutP50Ms: round(percentile(cuts, 50), 1),
      revokeCommandP50Ms: round(percentile(commands, 50), 1),
      deltaOnWireP50Ms: round(percentile(onWire, 50), 1),
      deltaOnWireMaxMs: round(Math.max(...onWire), 1),
      revocationPhaseSec: round(phaseMs / 1000, 1),
      revocationPhaseNodeCpuSec: round(nodeCpuMs / 1000, 1),
      revocationPhaseBrokerCpuSec: round(brokerCpuMs / 1000, 1),
      eventLoopDelayP99Ms: round(loopDelay.percentile(99) / 1e6, 1),
      eventLoopDelayMaxMs: round(loopDelay.max / 1e6, 1),
      baselineFanOutSubscribers: baselineSubscribers.length,
      baselineFanOutP50Ms: round(percentile(baselineMs, 50), 1),
      baselineFanOutP99Ms: round(percentile(baselineMs, 99), 1),
      propagationVsBaselineP99: round(percentile(propagation, 99) / percentile(baselineMs, 99), 1),
      deltaMessageBytes,
      fleetBaseCrlSerials: baseSerials,
      agentsOnlineAtEnd: stillOnline,
      setupSec: round(setupMs / 1000, 1),
      swtpmSetupSec: round(tpmMs / 1000, 1),
      lookupP50Us: round(lk.lookupP50Us, 2),
      setHasP50Us: round(lk.setHasP50Us, 2),
      setHasP99Us: round(lk.setHasP99Us, 2),
      lookups: LOOKUPS,
      crlParts: lk.parts,
      fullCrlSignMs: round(lk.signMs, 1),
      fullCrlFeedMs: round(lk.feedMs, 1),
      fullCrlAcceptMs: round(lk.acceptMs, 1),
      deltaAcceptMs: round(lk.deltaAcceptMs, 2),
      cacheReopenMs: round(lk.reopenMs, 1),
    };
    const rows: [string, string][] = [
      ['set-up', `${DEVICES} agents (own swtpm each, enrolled, online) in ${result.setupSec} s (swtpms ${result.swtpmSetupSec} s), ${SETUP_PARALLEL} at a time`],
      ['fleet base CRL (fleet phase)', `the fleet's real one (${baseSerials} serials); the ${REVOKED_SERIALS}-serial figures below are from the in-process lookup phase (a ${fmt(lk.fullCrlBytes / 1e6)} MB base × ${DEVICES} agents in one process would measure the harness). Each revocation sends a delta, cumulative since the base (${deltaMessageBytes} B message at the end)`],
      [
        'propagation p50 / p99 / max',
        `${fmt(result.propagationP50Ms)} / ${fmt(result.propagationP99Ms)} / ${fmt(result.propagationMaxMs)} ms over ${propagation.length} samples (${REVOCATIONS} revocations × ${DEVICES} agents, polled every ${POLL_MS} ms, ${missed} missed) ` +
          `— target p99 ≤ ${TARGET.propagationP99Ms} ms: ${verdict(result.propagationP99Ms <= TARGET.propagationP99Ms && missed <= propagation.length * 0.01)}`,
      ],
      ['  of which: delta on the wire', `p50 ${fmt(result.deltaOnWireP50Ms)} / max ${fmt(result.deltaOnWireMaxMs)} ms from t0 until mosquitto_sub (own process, auditor certificate) received the delta: the fleet side's share; the rest is the agents'`],
      [
        'baseline: plain mqtt.js fan-out',
        `p50 ${fmt(result.baselineFanOutP50Ms)} / p99 ${fmt(result.baselineFanOutP99Ms)} ms to ${baselineSubscribers.length} subscribers (${deltaMessageBytes} B retained QoS1); propagation p99 / baseline p99 = ${fmt(result.propagationVsBaselineP99)}`,
      ],
      ['revokeDevice() resolved p50', `${fmt(result.revokeCommandP50Ms)} ms (inventory, CRL signed + persisted, delta published, broker files + SIGHUP)`],
      [
        'CPU in the revocations phase',
        `this process ${fmt(result.revocationPhaseNodeCpuSec)} s, mosquitto ${fmt(result.revocationPhaseBrokerCpuSec)} s, over ${fmt(result.revocationPhaseSec)} s wall (2 cores; includes the ${PROBE_INTERVAL_MS} ms probe and the ${POLL_MS} ms polling); ` +
          `event-loop delay p99 ${fmt(result.eventLoopDelayP99Ms)} / max ${fmt(result.eventLoopDelayMaxMs)} ms (bridge and agents share it)`,
      ],
      [
        'session cut p50 / max',
        `${fmt(result.sessionCutP50Ms)} / ${fmt(result.sessionCutMs)} ms (first PUBACK 0x87, probe every ${PROBE_INTERVAL_MS} ms) — target max ≤ ${TARGET.sessionCutMs} ms: ${verdict(result.sessionCutMs <= TARGET.sessionCutMs)}`,
      ],
      ['lookup-phase CRL (in-process)', `${REVOKED_SERIALS} random 128-bit serials: full ${lk.fullCrlBytes} B DER in ${lk.parts} parts, delta with 1 entry ${lk.deltaCrlBytes} B DER`],
      [
        '  sign / parts→DER / accept',
        `${fmt(lk.signMs)} / ${fmt(lk.feedMs)} / ${fmt(lk.acceptMs)} ms (accept = parse + signature + index + LevelDB); delta accept ${fmt(lk.deltaAcceptMs, 2)} ms; reopen from LevelDB ${fmt(lk.reopenMs)} ms`,
      ],
      [
        '  status() lookup p50 / p99',
        `${fmt(lk.lookupP50Us, 2)} / ${fmt(lk.lookupP99Us, 2)} µs over ${LOOKUPS} lookups (complete + delta held) — target p99 < ${TARGET.lookupP99Us} µs: ${verdict(lk.lookupP99Us < TARGET.lookupP99Us)}`,
      ],
      ['  baseline: Set.has p50 / p99', `${fmt(lk.setHasP50Us, 2)} / ${fmt(lk.setHasP99Us, 2)} µs (same keys, normalized beforehand; includes the hrtime overhead, as above)`],
    ];
    const w = Math.max(...rows.map(([k]) => k.length));
    for (const [k, v] of rows) process.stdout.write(`${k.padEnd(w)}  ${v}\n`);
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    await cleanup();
  }
}

// An interrupted run (Ctrl-C, `timeout`) still stops its swtpms and mosquitto and removes its files.
for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
  process.once(signal, () => {
    log(`${signal}: cleaning up`);
    // Bounded: a terminal's Ctrl-C or `timeout` signals the whole process group, so mosquitto and the
    // swtpms may be dying at the same moment, and a stop that waits on them must not hold the exit.
    // process.exit runs the harness's exit hook, which SIGKILLs whatever it still tracks.
    const bound = new Promise((r) => setTimeout(r, 20_000).unref());
    void Promise.race([cleanup(), bound]).finally(() => process.exit(code));
  });
}

try {
  await main();
} catch (e) {
  process.stderr.write(`bench:revocation failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
}
