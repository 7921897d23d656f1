/**
 * `npm run bench:agent`: the long-lived agent against a real fleet (swtpm, mosquitto with the generated
 * config, bridge, CA), one device:
 * 1. Rotation latency: rotateNow() until the agent is online with the new certificate and the bridge
 *    confirmed it (begin → certify + CSR in the TPM → request → trial mTLS handshake → confirm), p50/p99,
 *    and the TPM signatures each rotation cost (target ≤ 3).
 * 2. Reconnect after a broker restart: from the moment the restarted mosquitto accepts connections
 *    until the agent is online again (status published), p50; baseline in the same run: a plain
 *    mqtt.js client with its default 1 s reconnect period.
 * 3. Outbox drain: events queued while the broker is down, then delivered (QoS1, in order, each
 *    removed after its PUBACK) once it is back, events/s; baseline: the same number of QoS1 publishes
 *    of the same size from a plain mqtt.js client.
 * 4. The TLS window on a chip-speed TPM: a second device whose TPM sits behind the faulty-TPM proxy
 *    (its own process) holding every TPM2_Sign for CHIP_SIGN_MS (real chips: 50–600 ms). The agent
 *    signs its handshake synchronously inside OpenSSL, so its event loop stops for that long: measured
 *    as the largest event-loop delay (perf_hooks) while a started agent connects on its stored identity,
 *    RESTARTS times; baseline in the same run: the same with no latency added.
 * 5. Footprint (issue 10): `npm run package` builds the Debian package; a third device enrolls with the
 *    packaged agent (its own Node 24, its /usr/bin/agent and default config) and stays connected
 *    BENCH_IDLE_MS (default 30 s); then its resident set (VmRSS) is read, and that of bare Node (the
 *    same binary, flags and environment, an idle setInterval) measured the same way in the same run.
 *    Targets: idleRssMiB <= 50, systemdExposure <= 2.5 (systemd-analyze security, from the build).
 * Ends with one JSON line. Latencies on swtpm are context, not targets.
 */
import mqtt from 'mqtt';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { TPM_CC } from '../../sim/src/sim/tpm-proxy.js';
import { TpmProxyProcess } from '../../sim/src/sim/tpm-proxy-process.js';
import { DEFAULT_AGENT_CONFIG } from '../../agent/src/agent-config.js';
import { stopAll } from '../harness/index.js';
import { eventually, startFleetFixture } from '../agent/fleet-fixture.js';
import { percentile, round } from './stats.js';
import { idleFootprint, type IdleFootprint } from './footprint.js';
import { runPackageScript, type BuiltPackage } from '../deploy/package-build.js';

const ROTATIONS = Number(process.env['BENCH_ROTATIONS'] ?? 30);
const RESTARTS = Number(process.env['BENCH_RESTARTS'] ?? 5);
const EVENTS = Number(process.env['BENCH_EVENTS'] ?? 2000);
const CHIP_SIGN_MS = Number(process.env['BENCH_CHIP_SIGN_MS'] ?? 300);
const IDLE_MS = Number(process.env['BENCH_IDLE_MS'] ?? 30_000);

async function main(): Promise<void> {
  const fx = await startFleetFixture();
  try {
    const d = await fx.device('bench-agent');
    // The shipped defaults (backoff base 1 s, cap 3 min, full jitter), not the tests' quick retries.
    const agent = fx.agent(d, { config: DEFAULT_AGENT_CONFIG });
    await agent.start();

    // 1. Rotation.
    const rotation: number[] = [];
    const signatures: number[] = [];
    for (let i = 1; i <= ROTATIONS; i++) {
      const t0 = performance.now();
      agent.rotateNow();
      await eventually(() => agent.status().rotations === i && agent.state === 'online', 30_000, `rotation ${i}`);
      rotation.push(performance.now() - t0);
      signatures.push(agent.status().lastRotationSignatures ?? Number.NaN);
    }

    // 2. Reconnect after a broker restart, agent vs. a plain mqtt.js client on the same broker.
    // The baseline client is a device of its own (CN bench-plain): the broker names mutual-TLS sessions
    // by CN, and it publishes to its own events topic (the bridge ignores an unknown device's events).
    const role = await fx.fleet.clientCertificate('bench-plain');
    const plain = await mqtt.connectAsync(fx.fleet.broker.deviceUrl, { ca: fx.fleet.ca.rootCertificatePem, cert: role.certPem, key: role.keyPem, clientId: 'enr-bench-plain', protocolVersion: 5 });
    const reconnect: number[] = [];
    const baseline: number[] = [];
    for (let i = 0; i < RESTARTS; i++) {
      let plainBack: number | undefined;
      let agentBack: number | undefined;
      plain.once('connect', () => (plainBack = performance.now()));
      await fx.fleet.stopBroker();
      await eventually(() => agent.state === 'connecting' && !plain.connected, 10_000, 'both offline');
      await fx.fleet.startBroker();
      const up = performance.now();
      await eventually(() => {
        if (agentBack === undefined && agent.state === 'online' && agent.status().online) agentBack = performance.now();
        return agentBack !== undefined && plainBack !== undefined;
      }, 30_000, 'both back');
      reconnect.push(agentBack! - up);
      baseline.push(plainBack! - up);
    }

    // 3. Outbox drain.
    await fx.fleet.stopBroker();
    await eventually(() => agent.state === 'connecting', 10_000, 'offline');
    for (let i = 1; i <= EVENTS; i++) await agent.emitEvent({ type: 'clock_skew', count: i });
    await fx.fleet.startBroker();
    await eventually(() => agent.state === 'online', 30_000, 'online for the drain');
    const t0 = performance.now();
    await eventually(() => agent.status().outbox.pending === 0, 60_000, 'outbox drained');
    const drainMs = performance.now() - t0;
    await eventually(() => plain.connected, 10_000, 'plain client back');
    const payload = Buffer.alloc(180, 'x');
    const b0 = performance.now();
    await Promise.all(Array.from({ length: EVENTS }, () => plain.publishAsync(fx.fleet.topics.device('bench-plain', 'events'), payload, { qos: 1 })));
    const rawMs = performance.now() - b0;
    await plain.endAsync();
    await agent.stop();

    // 4. The TLS window: the largest event-loop stall while a started agent connects, by TPM speed.
    const chip = await fx.device('bench-chip');
    const proxy = await TpmProxyProcess.start(chip.tpm.port);
    const stalls = { chip: [] as number[], swtpm: [] as number[] };
    try {
      const device = { ...chip, bootstrap: { ...chip.bootstrap, tcti: proxy.tcti } };
      const enrolled = fx.agent(device, { config: DEFAULT_AGENT_CONFIG });
      await enrolled.start();
      await enrolled.stop();
      for (const kind of ['swtpm', 'chip'] as const) {
        await proxy.setRules(kind === 'chip' ? [{ commandCode: TPM_CC.Sign, latencyMs: CHIP_SIGN_MS }] : []);
        for (let i = 0; i < RESTARTS; i++) {
          const a = fx.agent(device, { config: DEFAULT_AGENT_CONFIG });
          const h = monitorEventLoopDelay({ resolution: 5 });
          h.enable();
          await a.start();
          h.disable();
          stalls[kind].push(h.max / 1e6);
          await a.stop();
        }
      }
    } finally {
      await proxy.stop();
    }

    // 5. Footprint of the packaged agent.
    const unpacked = mkdtempSync(join(tmpdir(), 'bench-agent-package-'));
    let built: BuiltPackage;
    let footprint: IdleFootprint;
    try {
      built = await runPackageScript(resolve(import.meta.dirname, '..'));
      execFileSync('dpkg-deb', ['-x', built.deb, unpacked]);
      footprint = await idleFootprint(fx, unpacked, IDLE_MS);
    } finally {
      rmSync(unpacked, { recursive: true, force: true });
    }

    const result = {
      bench: 'agent',
      rotations: ROTATIONS,
      rotationP50Ms: round(percentile(rotation, 50), 1),
      rotationP99Ms: round(percentile(rotation, 99), 1),
      tpmSignaturesPerRotation: Math.max(...signatures),
      reconnectAfterBrokerRestartP50Ms: round(percentile(reconnect, 50), 1),
      baselineReconnectP50Ms: round(percentile(baseline, 50), 1),
      reconnectVsBaseline: round(percentile(reconnect, 50) / percentile(baseline, 50), 2),
      outboxEvents: EVENTS,
      outboxEventsPerSec: Math.round(EVENTS / (drainMs / 1000)),
      baselineQos1PerSec: Math.round(EVENTS / (rawMs / 1000)),
      chipSignMs: CHIP_SIGN_MS,
      tlsLoopStallMaxMs: round(Math.max(...stalls.chip), 1),
      baselineLoopStallMaxMs: round(Math.max(...stalls.swtpm), 1),
      idleRssMiB: round(footprint.agent.rssMiB, 1),
      bareNodeRssMiB: round(footprint.bareNode.rssMiB, 1),
      idlePeakRssMiB: round(footprint.agent.peakRssMiB, 1),
      idleThreads: footprint.agent.threads,
      packageBytes: built.packageBytes,
      packageNode: built.node,
      systemdExposure: built.systemdExposure,
    };
    const rows: [string, string][] = [
      ['rotation p50 / p99', `${result.rotationP50Ms} / ${result.rotationP99Ms} ms (${ROTATIONS} rotations)`],
      ['TPM signatures per rotation (max)', `${result.tpmSignaturesPerRotation} (target ≤ 3)`],
      ['reconnect after broker restart p50', `${result.reconnectAfterBrokerRestartP50Ms} ms (plain mqtt.js, fixed 1 s period: ${result.baselineReconnectP50Ms} ms, ratio ${result.reconnectVsBaseline})`],
      ['outbox drain', `${result.outboxEventsPerSec} events/s (plain QoS1 publishes: ${result.baselineQos1PerSec}/s)`],
      ['event loop stalled by the TLS signature', `${result.tlsLoopStallMaxMs} ms max with ${CHIP_SIGN_MS} ms per TPM signature (swtpm: ${result.baselineLoopStallMaxMs} ms)`],
      ['packaged agent idle RSS', `${result.idleRssMiB} MiB after ${IDLE_MS / 1000} s online, peak ${result.idlePeakRssMiB} MiB, ${result.idleThreads} threads (target <= 50; bare Node ${built.node}: ${result.bareNodeRssMiB} MiB, +${round(result.idleRssMiB - result.bareNodeRssMiB, 1)} MiB)`],
      ['package', `${result.packageBytes} bytes; systemd exposure ${result.systemdExposure} (target <= 2.5)`],
    ];
    const w = Math.max(...rows.map(([k]) => k.length));
    for (const [k, v] of rows) process.stdout.write(`${k.padEnd(w)}  ${v}\n`);
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    await fx.stop();
    await stopAll();
  }
}

await main();
