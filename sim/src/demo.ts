/**
 * `npm run demo`: the embedded fleet, step by step, on loopback. A TPM manufacturer (throwaway CA) builds
 * three swtpm devices; the fleet side starts (CA, inventory, mosquitto with generated config, bridge);
 * the factory station verifies each TPM's EK certificate and provisions it; each device's agent enrolls
 * with its one-time token (credential activation + TPM2_Certify), then connects over mutual TLS with a
 * key that never left its TPM. A table shows the result. Everything is stopped and removed at the end, on
 * failure, and on Ctrl-C (demo-shutdown.ts).
 *
 * Options: `--devices N` (1–10, default 3); `--keep-running`: after the table the devices come back
 * online with their stored identities and everything keeps running until Ctrl-C.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { X509Certificate } from 'node:crypto';
import { systemClock } from '../../common/clock.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import { attributesOf, parsePublic2b, publicToSpki } from '../../native/lib/wire/public.js';

const parsePublicSpki = (b64: string) => publicToSpki(parsePublic2b(Buffer.from(b64, 'base64')));
import { EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import { InventorySink } from '../../provisioning/src/sinks.js';
import { provisionBatch } from '../../provisioning/src/batch.js';
import { Agent } from '../../agent/src/agent.js';
import { loadBootstrap } from '../../agent/src/config.js';
import { AgentStore } from '../../agent/src/store.js';
import { createManufacturer, manufactureTpm, SwtpmProcess } from './swtpm.js';
import { DemoShutdown } from './demo-shutdown.js';

const USAGE = 'usage: node dist/demo.mjs [--devices N (1-10, default 3)] [--keep-running]';
let stepNo = 0;
const step = (text: string) => console.log(`\n[${++stepNo}] ${text}`);
const info = (text: string) => console.log(`    ${text}`);

function options(): { devices: number; keepRunning: boolean } {
  try {
    const { values } = parseArgs({ options: { devices: { type: 'string', default: '3' }, 'keep-running': { type: 'boolean', default: false } }, strict: true, allowPositionals: false });
    const devices = Number(values.devices);
    if (!Number.isInteger(devices) || devices < 1 || devices > 10) throw new Error(`--devices must be an integer from 1 to 10, not ${values.devices}`);
    return { devices, keepRunning: values['keep-running'] };
  } catch (e) {
    console.error(`demo: [USAGE] ${(e as Error).message}\n${USAGE}`);
    process.exit(2);
  }
}

async function main(): Promise<void> {
  const { devices: DEVICES, keepRunning } = options();
  const work = mkdtempSync(join(tmpdir(), 'tpm-fleet-demo-'));
  const shutdown = new DemoShutdown(work).install();
  try {
    step(`Manufacturing ${DEVICES} TPMs: swtpm_setup writes RSA and ECC EK certificates signed by a throwaway manufacturer CA`);
    const manufacturer = createManufacturer(join(work, 'manufacturer'));
    const t0 = Date.now();
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
    info(`manufactured in ${Date.now() - t0} ms: ${tpms.map((t) => t.tcti).join(', ')}`);

    step('Starting the fleet: CA (key file), inventory (LevelDB), mosquitto with generated config and ACLs, bridge');
    const fleet = await EmbeddedFleet.start({
      dir: join(work, 'fleet'),
      clock: systemClock,
      trustDomain: 'demo.fleet.example',
      ekTrust: { roots: [manufacturer.rootPem()], intermediates: [manufacturer.intermediatePem()] },
      certificateLifetimeSec: 7 * 86_400,
    });
    shutdown.defer(() => fleet.stop());
    info(`enrollment listener ${fleet.broker.enrollUrl} (TLS, no client certificate)`);
    info(`device listener     ${fleet.broker.deviceUrl} (mutual TLS, username = certificate CN)`);
    info(`bridge connected as role:bridge; trust domain spiffe://demo.fleet.example`);

    step('Factory station: verify each EK certificate against the manufacturer root, register, mint one-time tokens');
    const manifest = join(work, 'manifest.jsonl');
    writeFileSync(manifest, tpms.map((t, i) => JSON.stringify({ deviceId: `demo-device-${i + 1}`, tcti: t.tcti, metadata: { model: 'demo-gw', serial: `SN-00${i + 1}` } })).join('\n'));
    const summary = await provisionBatch({
      manifestPath: manifest,
      outDir: join(work, 'station'),
      manufacturers: { roots: [manufacturer.rootPem()], intermediates: [manufacturer.intermediatePem()] },
      fleet: { enrollUrl: fleet.broker.enrollUrl, deviceUrl: fleet.broker.deviceUrl, trustBundle: fleet.trustBundle, baseTopic: 'fleet/v1' },
      sink: new InventorySink(fleet.inventory),
      clock: systemClock,
      tokenTtlSec: 86_400,
      openTpm: (tcti) => NativeTpm.open(tcti),
    });
    for (const e of summary.entries) info(`${e.deviceId}: ${e.result}${e.code ? ` [${e.code}]` : ''}; EK ${e.ekPublicHash?.slice(0, 16) ?? '-'}…; bootstrap ${e.bootstrapPath ? 'written (mode 0600)' : '-'}`);
    if (summary.provisioned !== DEVICES) throw new Error('the station refused a device');

    step('Agents enroll: CSR signed in the TPM, credential activation with the EK, TPM2_Certify of the key, then mTLS');
    const newAgents = () => summary.entries.map((e, i) => new Agent({ bootstrap: loadBootstrap(e.bootstrapPath!), dataDir: join(work, `agent-${i + 1}`) }));
    const agents = newAgents();
    shutdown.defer(() => Promise.all(agents.map((a) => a.stop())).then(() => undefined));
    const t1 = Date.now();
    await Promise.all(agents.map((a) => a.start()));
    info(`${DEVICES} devices enrolled and online in ${Date.now() - t1} ms`);
    const enrolledSerials = agents.map((a) => a.status().certSerial!);

    step('Rotation: each agent makes a fresh key in its TPM, the AK certifies it over the bridge\'s nonce, then it reconnects with it');
    const t2 = Date.now();
    for (const a of agents) a.rotateNow();
    await waitUntil(() => agents.every((a) => a.status().rotations === 1 && a.state === 'online'), 30_000, shutdown.signal);
    info(`${DEVICES} devices rotated in ${Date.now() - t2} ms; each old certificate retired by the bridge after the device confirmed`);

    step('Result');
    const rows = await Promise.all(
      agents.map(async (a, i) => {
        const s = a.status();
        const cert = fleet.inventory.getCertificate(s.certSerial!)!;
        // What the agent stored for its key: the TPM2B_PUBLIC; the private part is a TPM-encrypted blob.
        await a.stop();
        const store = new AgentStore(join(work, `agent-${i + 1}`, 'state'));
        await store.open();
        const active = await store.active();
        await store.close();
        const attrs = attributesOf(parsePublic2b(Buffer.from(active!.slot.key.public, 'base64')));
        // The certificate certifies exactly the key the TPM holds.
        const certified = new X509Certificate(cert.pem).publicKey.export({ type: 'spki', format: 'der' });
        const inTpm = attrs.fixedTPM && attrs.fixedParent && attrs.sensitiveDataOrigin && certified.equals(parsePublicSpki(active!.slot.key.public));
        const retired = fleet.inventory.getCertificate(enrolledSerials[i]!)?.supersededAt !== undefined;
        return { id: s.deviceId, serial: s.certSerial!, expires: new Date(s.certNotAfter!).toISOString(), inTpm, sigs: s.lastRotationSignatures ?? 0, retired };
      }),
    );
    console.log('\n  device          | serial (after rotation)          | expires                  | key in TPM | old cert retired | TPM signatures for the rotation');
    console.log('  ----------------+----------------------------------+--------------------------+------------+------------------+--------------------------------');
    for (const r of rows) {
      console.log(`  ${r.id.padEnd(15)} | ${r.serial} | ${r.expires} | ${(r.inTpm ? 'yes' : 'NO').padEnd(10)} | ${(r.retired ? 'yes' : 'NO').padEnd(16)} | ${r.sigs}`);
    }
    const tokensUsed = fleet.inventory.listDevices().filter((d) => d.enrolledAt !== undefined).length;
    console.log(`\n  inventory: ${fleet.inventory.listDevices().length} devices, ${fleet.inventory.listCertificates().length} certificates, ${tokensUsed} tokens consumed`);
    console.log(`  CA root: ${new X509Certificate(readFileSync(fleet.ca.files.root)).subject}`);
    if (keepRunning) {
      const again = newAgents();
      shutdown.defer(() => Promise.all(again.map((a) => a.stop())).then(() => undefined));
      await Promise.all(again.map((a) => a.start()));
      console.log(`\n  ${DEVICES} devices online again with their stored identities; fleet at ${fleet.broker.deviceUrl}`);
      console.log(`  keeping everything running; Ctrl-C stops it and removes ${work}`);
      await new Promise<void>((resolve) => shutdown.signal.addEventListener('abort', () => resolve(), { once: true }));
      return; // interrupted: the shutdown stops everything and exits
    }
    console.log('\nDemo complete.');
  } catch (e) {
    // After Ctrl-C the steps in flight fail as their processes stop; the shutdown reports and exits. The
    // terminal signals the whole process group, so a child (swtpm_setup, mosquitto) may die of it and
    // fail a step before our own handler has run: let a pending signal land before calling it a failure.
    if (!shutdown.interrupted) await new Promise((r) => setTimeout(r, 200));
    if (!shutdown.interrupted) throw e;
  } finally {
    if (!shutdown.interrupted) await shutdown.close();
  }
}

main().catch((e: unknown) => {
  const err = e as { code?: string; message?: string };
  console.error(`\ndemo failed: ${err.code ? `[${err.code}] ` : ''}${err.message ?? String(e)}`);
  process.exit(1);
});

async function waitUntil(check: () => boolean, timeoutMs: number, signal: AbortSignal): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (signal.aborted) throw new Error('interrupted');
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
