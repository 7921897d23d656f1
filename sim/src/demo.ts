/**
 * `npm run demo`: the whole device lifecycle on one machine, on loopback, with a live status table.
 *   1. A TPM manufacturer (throwaway CA) builds N swtpm devices with EK certificates.
 *   2. The fleet side starts: CA (key file), LevelDB inventory, mosquitto with generated config, bridge.
 *   3. The factory station verifies each EK certificate and provisions the device (one-time token).
 *   4. Enrollment: each agent (a library instance) enrolls with its token and goes online over mutual
 *      TLS with a key that never left its TPM.
 *   5. Rotation: the operator's rotate-now through the bridge; each agent rotates to a new TPM key.
 *   6. Revocation of one device: it is cut off; the others cache the new CRL and report its number.
 *   7. Broker outage: mosquitto SIGKILLed and restarted; the agents reconnect by themselves.
 * Then a summary with timings and where the data lives. Everything is stopped and the work directory
 * removed at the end, on failure, and on Ctrl-C (demo-shutdown.ts); `--keep-running` keeps it all up
 * until Ctrl-C. The table: demo-table.ts (live on a terminal, plain lines otherwise), fed by
 * demo-devices.ts; the lifecycle steps: demo-steps.ts; the closing words: demo-summary.ts.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { systemClock } from '../../common/clock.js';
import { BUILD_VERSION } from '../../common/build-version.js';
import { isCodedError } from '../../common/coded-error.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import { DEFAULT_OPERATOR, EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import { InventorySink } from '../../provisioning/src/sinks.js';
import { provisionBatch } from '../../provisioning/src/batch.js';
import { Agent } from '../../agent/src/agent.js';
import { parseAgentConfig } from '../../agent/src/agent-config.js';
import { loadBootstrap } from '../../agent/src/config.js';
import { OperatorClient } from '../../operator/src/client.js';
import { createManufacturer, manufactureTpm, SwtpmProcess } from './swtpm.js';
import { DemoShutdown } from './demo-shutdown.js';
import { DEMO_HELP, parseDemoArgs, type DemoCommand } from './demo-options.js';
import { LiveTable } from './demo-table.js';
import { DemoDevices } from './demo-devices.js';
import { brokerOutage, enrollment, revocation, rotation, type StepContext } from './demo-steps.js';
import { dataLines, summaryLines } from './demo-summary.js';

const TRUST_DOMAIN = 'demo.fleet.example';
const BASE_TOPIC = 'fleet/v1';
/**
 * The agents' runtime config: the defaults, except a reconnect backoff of 0.2–2 s (default 1–180 s)
 * so the outage ends within the demo, and CRL acknowledgements in the status within 0.5 s (default
 * spread over 30 s so a large fleet does not answer one revocation at once).
 */
const AGENT_CONFIG = parseAgentConfig({ v: 1, backoff: { baseMs: 200, capMs: 2000 }, revocation: { reportDelayMs: 500 } }, 'demo agent config');

function command(): Extract<DemoCommand, { kind: 'run' }> {
  let cmd: DemoCommand;
  try {
    cmd = parseDemoArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`demo: ${isCodedError(e) ? e.code : 'DEMO_USAGE'}: ${(e as Error).message.split('\n')[0]} (demo --help)\n`);
    process.exit(2);
  }
  if (cmd.kind === 'help') {
    process.stdout.write(`${DEMO_HELP}\n`);
    process.exit(0);
  }
  if (cmd.kind === 'version') {
    process.stdout.write(`${BUILD_VERSION}\n`);
    process.exit(0);
  }
  return cmd;
}

async function main(): Promise<void> {
  const { devices: DEVICES, keepRunning } = command();
  const clock = systemClock;
  const started = clock.now();
  const work = mkdtempSync(join(tmpdir(), 'tpm-fleet-demo-'));
  const shutdown = new DemoShutdown(work).install();
  const table = new LiveTable(process.stdout, () => clock.now());
  const board = new DemoDevices(table);
  let stepNo = 0;
  const step = (text: string) => table.print(`\n[${++stepNo}] ${text}`);
  const info = (text: string) => table.print(`    ${text}`);
  const since = (t: number) => clock.now() - t;
  try {
    step(`Manufacturing ${DEVICES} TPMs: swtpm_setup writes RSA and ECC EK certificates signed by a throwaway manufacturer CA`);
    const manufacturer = createManufacturer(join(work, 'manufacturer'));
    let t = clock.now();
    // The first TPM creates the manufacturer CA; the others can then be made in parallel.
    await manufactureTpm(join(work, 'tpm-0'), manufacturer, shutdown.signal);
    await Promise.all(Array.from({ length: DEVICES - 1 }, (_, i) => manufactureTpm(join(work, `tpm-${i + 1}`), manufacturer, shutdown.signal)));
    const tpms = await Promise.all(
      Array.from({ length: DEVICES }, async (_, i) => {
        const tpm = await SwtpmProcess.start(join(work, `tpm-${i}`));
        shutdown.defer(() => tpm.stop());
        return tpm;
      }),
    );
    const manufactureMs = since(t);
    info(`manufactured in ${manufactureMs} ms: ${tpms.map((x) => x.tcti).join(', ')}`);

    step('Starting the fleet: CA (key file), inventory (LevelDB), mosquitto with generated config and ACLs, bridge');
    t = clock.now();
    const fleet = await EmbeddedFleet.start({
      dir: join(work, 'fleet'),
      clock,
      trustDomain: TRUST_DOMAIN,
      baseTopic: BASE_TOPIC,
      ekTrust: { roots: [manufacturer.rootPem()], intermediates: [manufacturer.intermediatePem()] },
      metrics: { port: 0 },
    });
    shutdown.defer(() => fleet.stop());
    const fleetStartMs = since(t);
    info(`enrollment listener ${fleet.broker.enrollUrl} (TLS, no client certificate)`);
    info(`device listener     ${fleet.broker.deviceUrl} (mutual TLS, username = certificate CN)`);
    info(`bridge connected as role:bridge; trust domain spiffe://${TRUST_DOMAIN}; metrics ${fleet.metricsUrl ?? '-'}`);

    step('Factory station: verify each EK certificate against the manufacturer root, register, mint one-time tokens');
    t = clock.now();
    const manifest = join(work, 'manifest.jsonl');
    writeFileSync(manifest, tpms.map((x, i) => JSON.stringify({ deviceId: `demo-device-${i + 1}`, tcti: x.tcti, metadata: { model: 'demo-gw', serial: `SN-00${i + 1}` } })).join('\n'));
    const provisioned = await provisionBatch({
      manifestPath: manifest,
      outDir: join(work, 'station'),
      manufacturers: { roots: [manufacturer.rootPem()], intermediates: [manufacturer.intermediatePem()] },
      fleet: { enrollUrl: fleet.broker.enrollUrl, deviceUrl: fleet.broker.deviceUrl, trustBundle: fleet.trustBundle, baseTopic: BASE_TOPIC },
      sink: new InventorySink(fleet.inventory),
      clock,
      tokenTtlSec: 86_400,
      openTpm: (tcti) => NativeTpm.open(tcti),
    });
    const provisionMs = since(t);
    for (const e of provisioned.entries) board.provisioned(e.deviceId, e.result === 'provisioned' ? `EK ${e.ekPublicHash?.slice(0, 12) ?? '?'}… verified; token minted` : `station refused [${e.code ?? '?'}]`);
    info(`${provisioned.provisioned}/${DEVICES} provisioned in ${provisionMs} ms; each bootstrap file (mode 0600) holds its device's one-time token`);
    if (provisioned.provisioned !== DEVICES) throw new Error('the station refused a device');

    const agents = provisioned.entries.map(
      (e, i) => new Agent({ bootstrap: loadBootstrap(e.bootstrapPath!), dataDir: join(work, `agent-${i + 1}`), config: AGENT_CONFIG, logger: board.loggerFor(e.deviceId) }),
    );
    for (const a of agents) board.attach(a);
    shutdown.defer(() => Promise.all(agents.map((a) => a.stop())).then(() => undefined));
    const ctx: StepContext = { fleet, agents, clock, signal: shutdown.signal, say: info };

    step('Enrollment: each agent signs its CSR in the TPM, activates the credential with its EK, TPM2_Certify proves the key, then mTLS');
    const enrolled = await enrollment(ctx);
    table.snapshot();

    step("Rotation: the operator sends rotate-now through the bridge; each agent makes a fresh key in its TPM and reconnects with it");
    const operator = await connectOperator(fleet, join(work, 'operator'));
    shutdown.defer(() => operator.close());
    const rotated = await rotation(ctx, operator);
    await operator.close();
    table.snapshot();

    let revoked;
    if (DEVICES >= 2) {
      step(`Revocation: the fleet revokes ${agents[DEVICES - 1]!.deviceId}; the broker cuts it off, the others learn it from the new CRL`);
      revoked = await revocation(ctx, agents[DEVICES - 1]!);
      table.snapshot();
    } else {
      step('Revocation: skipped, it needs a second device to learn of it (--devices 2 or more)');
    }

    step('Broker outage: mosquitto is killed, then started again');
    const outage = await brokerOutage(ctx, agents.filter((a) => a.state !== 'revoked'));
    table.finish();

    const lines = [
      '',
      ...summaryLines({ devices: DEVICES, manufactureMs, fleetStartMs, provisioned: provisioned.provisioned, provisionMs, enrollment: enrolled, rotation: rotated, ...(revoked ? { revocation: revoked } : {}), outage, totalMs: since(started) }),
      '',
      ...dataLines(work, keepRunning),
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
    if (keepRunning) {
      process.stdout.write(
        [
          '',
          `  fleet at ${fleet.broker.deviceUrl}; Prometheus metrics at ${fleet.metricsUrl ?? '-'}`,
          `  try: node dist/operator.mjs devices --config ${join(work, 'operator', 'config.json')}`,
          `  keeping everything running; Ctrl-C stops it and removes ${work}`,
          '',
        ].join('\n'),
      );
      await new Promise<void>((resolve) => shutdown.signal.addEventListener('abort', () => resolve(), { once: true }));
      return; // interrupted: the shutdown stops everything and exits
    }
  } catch (e) {
    // After Ctrl-C the steps in flight fail as their processes stop; the shutdown reports and exits. The
    // terminal signals the whole process group, so a child (swtpm_setup, mosquitto) may die of it and
    // fail a step before our own handler has run: let a pending signal land before calling it a failure.
    if (!shutdown.interrupted) await new Promise((r) => setTimeout(r, 200));
    if (!shutdown.interrupted) {
      table.finish(); // the state the devices were in when it failed
      throw e;
    }
    return;
  } finally {
    if (!shutdown.interrupted) await shutdown.close();
  }
  process.stdout.write(`\nDemo complete: every process stopped, ${work} removed.\n`);
}

/** The operator's client certificate from the fleet CA, written with a config for dist/operator.mjs, and a session. */
async function connectOperator(fleet: EmbeddedFleet, dir: string): Promise<OperatorClient> {
  const cert = await fleet.clientCertificate(DEFAULT_OPERATOR);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileSync(join(dir, 'ops-cert.pem'), cert.certPem);
  writeFileSync(join(dir, 'ops-key.pem'), cert.keyPem, { mode: 0o600 });
  writeFileSync(join(dir, 'fleet-root.pem'), fleet.trustBundle.join(''));
  writeFileSync(join(dir, 'config.json'), `${JSON.stringify({ broker: fleet.broker.deviceUrl, cert: 'ops-cert.pem', key: 'ops-key.pem', ca: 'fleet-root.pem', baseTopic: BASE_TOPIC }, null, 2)}\n`);
  return OperatorClient.connect({
    broker: fleet.broker.deviceUrl,
    certPem: cert.certPem,
    keyPem: cert.keyPem,
    caPem: fleet.trustBundle.join(''),
    operatorId: DEFAULT_OPERATOR.slice('role:operator:'.length),
    baseTopic: BASE_TOPIC,
    timeoutMs: 10_000,
  });
}

main().catch((e: unknown) => {
  const err = e as { code?: string; message?: string };
  process.stderr.write(`demo: ${isCodedError(e) ? err.code : 'DEMO_FAILED'}: ${err.message ?? String(e)}\n`);
  process.exit(1);
});
