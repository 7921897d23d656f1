import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

/**
 * The baseline for `npm run bench:tpm`: the same TPM operations done the way scripts do them with
 * tpm2-tools 5.x, one process per command, objects at persistent handles (swtpm has no resource
 * manager, so transient objects loaded by one tool process would leak). Only the benchmark uses
 * tpm2-tools; the product never does.
 */
const run = promisify(execFile);

export type BaselineOp = 'sign' | 'create' | 'certify' | 'quote' | 'activate';

export interface ToolsBaselineOptions {
  readonly tcti: string;
  /** Persistent SRK to create keys under (the addon's ensureSrk made it). */
  readonly srkHandle: number;
  readonly iterations: number;
}

const EK = '0x81010101';
const AK = '0x81010102';
const KEY = '0x81010103';
const hex = (n: number) => `0x${n.toString(16)}`;

export async function measureToolsBaseline(opts: ToolsBaselineOptions): Promise<Record<BaselineOp, number[]>> {
  const dir = mkdtempSync(join(tmpdir(), 'tools-bench-'));
  const env = { ...process.env, TPM2TOOLS_TCTI: opts.tcti };
  const tool = async (cmd: string, ...args: string[]) => {
    try {
      await run(cmd, args, { env, cwd: dir });
    } catch (e) {
      const err = e as { stderr?: string; message: string };
      throw new Error(`${cmd} ${args.join(' ')}: ${err.stderr || err.message}`);
    }
  };
  const time = async (fn: () => Promise<void>): Promise<number> => {
    const t0 = process.hrtime.bigint();
    await fn();
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };
  const srk = hex(opts.srkHandle);
  const keyAttrs = 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign';
  try {
    await evictAll(tool);
    // Set-up (not measured): EK, AK and identity key at persistent handles, a credential for the AK.
    await tool('tpm2_createek', '-c', EK, '-G', 'ecc', '-u', 'ek.pub');
    await tool('tpm2_create', '-C', srk, '-G', 'ecc256:ecdsa-sha256:null', '-a', `${keyAttrs}|restricted`, '-u', 'ak.pub', '-r', 'ak.priv');
    await tool('tpm2_load', '-C', srk, '-u', 'ak.pub', '-r', 'ak.priv', '-c', 'ak.ctx', '-n', 'ak.name');
    await tool('tpm2_evictcontrol', '-C', 'o', '-c', 'ak.ctx', AK);
    await tool('tpm2_flushcontext', '-t');
    await tool('tpm2_create', '-C', srk, '-G', 'ecc256', '-a', keyAttrs, '-u', 'key.pub', '-r', 'key.priv');
    await tool('tpm2_load', '-C', srk, '-u', 'key.pub', '-r', 'key.priv', '-c', 'key.ctx');
    await tool('tpm2_evictcontrol', '-C', 'o', '-c', 'key.ctx', KEY);
    await tool('tpm2_flushcontext', '-t');
    writeFileSync(join(dir, 'secret'), Buffer.alloc(32, 7));
    writeFileSync(join(dir, 'digest'), Buffer.alloc(32, 9));
    const akName = readFileSync(join(dir, 'ak.name')).toString('hex');
    await tool('tpm2_makecredential', '-T', 'none', '-u', 'ek.pub', '-s', 'secret', '-n', akName, '-o', 'cred.in');

    const ops: Record<BaselineOp, () => Promise<void>> = {
      sign: () => tool('tpm2_sign', '-c', KEY, '-g', 'sha256', '-d', '-o', 'sig', 'digest'),
      create: () => tool('tpm2_create', '-C', srk, '-G', 'ecc256', '-a', keyAttrs, '-u', 'n.pub', '-r', 'n.priv'),
      certify: () => tool('tpm2_certify', '-c', KEY, '-C', AK, '-g', 'sha256', '-o', 'attest', '-s', 'csig'),
      quote: () => tool('tpm2_quote', '-c', AK, '-l', 'sha256:0,1,2,3', '-q', '0102030405060708', '-m', 'qmsg', '-s', 'qsig', '-g', 'sha256'),
      activate: async () => {
        // What a script must do: a policy session for the EK, PolicySecret(endorsement), activate, flush.
        await tool('tpm2_startauthsession', '--policy-session', '-S', 's.ctx');
        await tool('tpm2_policysecret', '-S', 's.ctx', '-c', 'e');
        await tool('tpm2_activatecredential', '-c', AK, '-C', EK, '-i', 'cred.in', '-o', 'out', '-P', 'session:s.ctx');
        await tool('tpm2_flushcontext', 's.ctx');
      },
    };
    const out = {} as Record<BaselineOp, number[]>;
    for (const [name, op] of Object.entries(ops) as [BaselineOp, () => Promise<void>][]) {
      await op(); // warm-up
      const samples: number[] = [];
      for (let i = 0; i < opts.iterations; i++) samples.push(await time(op));
      out[name] = samples;
    }
    return out;
  } finally {
    await evictAll(tool).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}

async function evictAll(tool: (cmd: string, ...args: string[]) => Promise<void>): Promise<void> {
  for (const h of [EK, AK, KEY]) await tool('tpm2_evictcontrol', '-C', 'o', '-c', h).catch(() => undefined);
}
