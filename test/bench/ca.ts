/**
 * `npm run bench:ca`:
 * 1. CSR → signed certificate throughput on ONE core (a child pinned with `taskset -c 0`) for the key-file
 *    and PKCS#11 (SoftHSM2) backends with 8 requests in flight, against the naive @peculiar/x509 path
 *    measured in the same run. Targets: ≥ 1,000/s (file), ≥ 500/s (PKCS#11), zero CKR_OPERATION_ACTIVE.
 * 2. Device-side enrollment latency: real agents on swtpm enroll through mosquitto and the bridge
 *    (start() until online over mTLS), p50/p99, and TPM signatures per enrollment (CSR, certify, TLS).
 * Ends with one JSON line.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { systemClock } from '../../common/clock.js';
import { mintEnrollmentToken } from '../../common/enrollment-token.js';
import { Agent } from '../../agent/src/agent.js';
import { EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import { startTpm, stopAll } from '../harness/index.js';
import { benchIssuance, type BenchIssuanceResult } from './ca-issuance.js';
import { percentile, round, timeMs } from './stats.js';

const run = promisify(execFile);
const TPMS = 4;
const ENROLLMENTS_PER_TPM = Number(process.env['BENCH_ENROLLMENTS_PER_TPM'] ?? 10);

async function issuanceOnOneCore(): Promise<BenchIssuanceResult> {
  const self = fileURLToPath(import.meta.url);
  const { stdout } = await run('taskset', ['-c', '0', process.execPath, self, 'issuance'], { maxBuffer: 1 << 20 });
  return JSON.parse(stdout.trim().split('\n').pop()!) as BenchIssuanceResult;
}

async function enrollmentLatency(): Promise<{ samples: number[]; signatures: number[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-enroll-'));
  const tpms = await Promise.all(Array.from({ length: TPMS }, () => startTpm()));
  const fleet = await EmbeddedFleet.start({
    dir: join(dir, 'fleet'),
    clock: systemClock,
    trustDomain: 'bench.fleet',
    ekTrust: { roots: [tpms[0]!.manufacturerRootPem], intermediates: [tpms[0]!.manufacturerIntermediatePem] },
  });
  const samples: number[] = [];
  const signatures: number[] = [];
  try {
    for (const [t, sw] of tpms.entries()) {
      const tpm = await NativeTpm.open(sw.tcti);
      const ekCert = (await tpm.readEkCertificate('ecc'))!;
      const ek = await tpm.createEk('ecc');
      const ekPublicHash = createHash('sha256').update(ek.spki).digest('hex');
      await tpm.flush(ek);
      await tpm.close();
      // One TPM can stand for several devices here (separate ids, tokens and agent stores): what is
      // measured is one device's path through the protocol, TPM and broker.
      for (let i = 0; i < ENROLLMENTS_PER_TPM; i++) {
        const deviceId = `bench-${t}-${i}`;
        const { token, tokenHash } = mintEnrollmentToken();
        const now = Date.now();
        await fleet.inventory.registerDevice(
          { deviceId, ekPublicHash, ekCertificate: ekCert.toString('base64'), ekKind: 'ecc', metadata: {}, registeredAt: now },
          { tokenHash, deviceId, ekPublicHash, createdAt: now, expiresAt: now + 3_600_000 },
        );
        const agent = new Agent({
          bootstrap: { v: 1, deviceId, tcti: sw.tcti, enrollUrl: fleet.broker.enrollUrl, deviceUrl: fleet.broker.deviceUrl, trustBundle: fleet.trustBundle, token, tokenExpiresAt: now + 3_600_000 },
          dataDir: join(dir, deviceId),
        });
        samples.push(await timeMs(() => agent.start()));
        const s = agent.status();
        signatures.push(s.tpmSignatures + s.tlsHandshakes);
        await agent.stop();
      }
    }
    return { samples, signatures };
  } finally {
    await fleet.stop();
    await Promise.all(tpms.map((t) => t.stop()));
    await stopAll(); // the harness's manufacturer CA directory
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  if (process.argv[2] === 'issuance') {
    console.log(JSON.stringify(await benchIssuance({ log: (l) => process.stderr.write(`${l}\n`) })));
    return;
  }
  process.stderr.write('[bench:ca] issuance on one core (taskset -c 0)...\n');
  const iss = await issuanceOnOneCore();
  process.stderr.write(`[bench:ca] enrollment latency: ${TPMS * ENROLLMENTS_PER_TPM} agents on swtpm through mosquitto...\n`);
  const enr = await enrollmentLatency();
  console.log('CSR -> signed certificate, one core, 8 in flight');
  console.log(`  key file (hand-built DER)   ${iss.fileCertsPerSec.toFixed(0).padStart(6)} certs/s   target >= 1000   ${(iss.fileCertsPerSec / iss.naiveCertsPerSec).toFixed(1)}x naive`);
  console.log(`  PKCS#11 (SoftHSM2)          ${iss.pkcs11CertsPerSec.toFixed(0).padStart(6)} certs/s   target >= 500    ${(iss.pkcs11CertsPerSec / iss.naiveCertsPerSec).toFixed(1)}x naive`);
  console.log(`  naive @peculiar/x509        ${iss.naiveCertsPerSec.toFixed(0).padStart(6)} certs/s   (baseline)`);
  console.log(`  CKR_OPERATION_ACTIVE seen: ${iss.pkcs11OperationActive}`);
  console.log(`Enrollment (agent start -> online over mTLS), ${enr.samples.length} devices on swtpm`);
  console.log(`  p50 ${percentile(enr.samples, 50).toFixed(1)} ms   p99 ${percentile(enr.samples, 99).toFixed(1)} ms   TPM signatures per enrollment: max ${Math.max(...enr.signatures)}`);
  console.log(
    JSON.stringify({
      bench: 'ca',
      fileCertsPerSec: Math.round(iss.fileCertsPerSec),
      pkcs11CertsPerSec: Math.round(iss.pkcs11CertsPerSec),
      naiveCertsPerSec: Math.round(iss.naiveCertsPerSec),
      pkcs11OperationActive: iss.pkcs11OperationActive,
      enrollP50Ms: round(percentile(enr.samples, 50), 1),
      enrollP99Ms: round(percentile(enr.samples, 99), 1),
      tpmSignaturesPerEnrollment: Math.max(...enr.signatures),
    }),
  );
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
