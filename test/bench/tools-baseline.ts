import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ALG } from '../../native/lib/wire/constants.js';
import { makeCredential } from '../../native/lib/wire/make-credential.js';
import { parsePublic2b } from '../../native/lib/wire/public.js';
import { ekPolicySession } from '../../native/lib/wire/templates.js';

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

/** swtpm_setup persists the certified P-384 EK here; both sides activate with this same key. */
const EK = '0x81010016';
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
    await tool('tpm2_readpublic', '-c', EK, '-o', 'ek.pub');
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
    // The credential comes from our software MakeCredential, in tpm2-tools' file format
    // (magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET).
    const ekPublic = parsePublic2b(readFileSync(join(dir, 'ek.pub')));
    const cred = makeCredential({ ekPublic, objectName: readFileSync(join(dir, 'ak.name')), credential: Buffer.alloc(32, 7) });
    const header = Buffer.alloc(8);
    header.writeUInt32BE(0xbadcc0de, 0);
    header.writeUInt32BE(1, 4);
    writeFileSync(join(dir, 'cred.in'), Buffer.concat([header, cred.credentialBlob, cred.encryptedSecret]));
    const policy = ekPolicySession(ekPublic);
    const hash = policy.sessionHashAlg === ALG.SHA384 ? 'sha384' : 'sha256';
    (policy.policyOr ?? []).forEach((d, i) => writeFileSync(join(dir, `branch${i}`), d));

    const ops: Record<BaselineOp, () => Promise<void>> = {
      sign: () => tool('tpm2_sign', '-c', KEY, '-g', 'sha256', '-d', '-o', 'sig', 'digest'),
      // Same TPM commands as the addon's createIdentityKey + flush: Create, Load, FlushContext.
      create: async () => {
        await tool('tpm2_create', '-C', srk, '-G', 'ecc256', '-a', keyAttrs, '-u', 'n.pub', '-r', 'n.priv');
        await tool('tpm2_load', '-C', srk, '-u', 'n.pub', '-r', 'n.priv', '-c', 'n.ctx');
        await tool('tpm2_flushcontext', '-t');
      },
      certify: () => tool('tpm2_certify', '-c', KEY, '-C', AK, '-g', 'sha256', '-o', 'attest', '-s', 'csig'),
      quote: () => tool('tpm2_quote', '-c', AK, '-l', 'sha256:0,1,2,3', '-q', '0102030405060708', '-m', 'qmsg', '-s', 'qsig', '-g', 'sha256'),
      activate: async () => {
        // What a script must do: a policy session for the EK, PolicySecret(endorsement) (+ PolicyOR for
        // a high-range EK), activate, flush: the same TPM commands the addon sends.
        await tool('tpm2_startauthsession', '--policy-session', '-g', hash, '-S', 's.ctx');
        await tool('tpm2_policysecret', '-S', 's.ctx', '-c', 'e');
        if (policy.policyOr) await tool('tpm2_policyor', '-S', 's.ctx', '-l', `${hash}:${policy.policyOr.map((_, i) => `branch${i}`).join(',')}`);
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
  for (const h of [AK, KEY]) await tool('tpm2_evictcontrol', '-C', 'o', '-c', h).catch(() => undefined);
}
