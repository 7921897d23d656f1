/**
 * `npm run bench:tpm`: latency of TPM operations through the native addon (one long-lived ESAPI
 * context) against the same operations through tpm2-tools (one process per command), both on the same
 * freshly manufactured swtpm in the same run. Prints a table, then one JSON line. Target: every
 * ratio (tools time / addon time) ≥ 10.
 */
import { createHash, randomBytes } from 'node:crypto';
import { startTpm, stopAll } from '../harness/index.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import { makeCredential } from '../../native/lib/wire/make-credential.js';
import { measureToolsBaseline, type BaselineOp } from './tools-baseline.js';
import { percentile, round, timeMs } from './stats.js';

const ADDON_ITERATIONS: Record<BaselineOp, number> = { sign: 300, create: 60, certify: 300, quote: 300, activate: 100 };
const TOOLS_ITERATIONS = Number(process.env['BENCH_TOOLS_ITERATIONS'] ?? 25);

async function measureAddon(tcti: string): Promise<Record<BaselineOp, number[]>> {
  const tpm = await NativeTpm.open(tcti);
  const out = {} as Record<BaselineOp, number[]>;
  const measure = async (name: BaselineOp, op: () => Promise<unknown>) => {
    await op();
    const samples: number[] = [];
    for (let i = 0; i < ADDON_ITERATIONS[name]; i++) samples.push(await timeMs(op));
    out[name] = samples;
  };
  try {
    // swtpm has three object slots and a persistent SRK takes one while used: load only what each
    // group of operations needs.
    const srk = await tpm.ensureSrk();
    const digest = createHash('sha256').update('bench').digest();
    const nonce = randomBytes(16);
    const key = (await tpm.createIdentityKey(srk)).key;
    await measure('sign', () => tpm.sign(key, digest));
    await measure('create', () => tpm.createIdentityKey(srk).then((k) => tpm.flush(k.key)));
    const ak = (await tpm.createAttestationKey(srk)).key;
    await measure('certify', () => tpm.certify(key, ak, nonce));
    await measure('quote', () => tpm.quote(ak, { bank: 'sha256', pcrs: [0, 1, 2, 3] }, nonce));
    await tpm.flush(key);
    const ek = await tpm.createEk('ecc');
    const cred = makeCredential({ ekPublic: ek.public, objectName: ak.name, credential: randomBytes(32) });
    await measure('activate', () => tpm.activateCredential(ak, ek, cred.credentialBlob, cred.encryptedSecret));
    await tpm.flush(ek);
    await tpm.flush(ak);
    return out;
  } finally {
    await tpm.close();
  }
}

async function main(): Promise<void> {
  const sw = await startTpm();
  try {
    process.stderr.write(`[bench:tpm] swtpm at ${sw.tcti}; addon first, then tpm2-tools (${TOOLS_ITERATIONS} runs each)\n`);
    const addon = await measureAddon(sw.tcti);
    // swtpm serves one connection at a time: the addon context is closed before the tools run.
    const tools = await measureToolsBaseline({ tcti: sw.tcti, srkHandle: 0x81000001, iterations: TOOLS_ITERATIONS });
    const rows = (Object.keys(addon) as BaselineOp[]).map((op) => {
      const a50 = percentile(addon[op], 50);
      const t50 = percentile(tools[op], 50);
      return { op, addonP50: a50, addonP99: percentile(addon[op], 99), toolsP50: t50, toolsP99: percentile(tools[op], 99), ratio: t50 / a50 };
    });
    const pad = (s: string | number, n: number) => String(s).padStart(n);
    console.log(`${'operation'.padEnd(10)}${pad('addon p50', 11)}${pad('addon p99', 11)}${pad('tools p50', 11)}${pad('tools p99', 11)}${pad('ratio', 8)}   (ms)`);
    for (const r of rows) {
      console.log(
        `${r.op.padEnd(10)}${pad(r.addonP50.toFixed(2), 11)}${pad(r.addonP99.toFixed(2), 11)}${pad(r.toolsP50.toFixed(2), 11)}${pad(r.toolsP99.toFixed(2), 11)}${pad(r.ratio.toFixed(1), 8)}`,
      );
    }
    const by = Object.fromEntries(rows.map((r) => [r.op, r]));
    const result = {
      bench: 'tpm',
      signP50Ms: round(by['sign']!.addonP50, 3),
      signP99Ms: round(by['sign']!.addonP99, 3),
      toolsSignP50Ms: round(by['sign']!.toolsP50, 3),
      signRatio: round(by['sign']!.ratio, 1),
      createRatio: round(by['create']!.ratio, 1),
      certifyRatio: round(by['certify']!.ratio, 1),
      quoteRatio: round(by['quote']!.ratio, 1),
      activateRatio: round(by['activate']!.ratio, 1),
    };
    const missed = rows.filter((r) => r.ratio < 10).map((r) => r.op);
    if (missed.length) process.stderr.write(`[bench:tpm] below the 10x target: ${missed.join(', ')}\n`);
    console.log(JSON.stringify(result));
  } finally {
    await sw.stop();
    await stopAll(); // the harness's manufacturer CA directory
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
