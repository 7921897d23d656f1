import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { track } from './registry.js';

/**
 * A fresh SoftHSM2 token (a real PKCS#11 module, in-process for both backends) in a temp dir. The
 * caller must put `env.SOFTHSM2_CONF` into process.env before the first C_Initialize. stop() deletes
 * the token dir (also done by the harness teardown if a test forgot).
 */
export interface SoftHsm {
  readonly modulePath: string;
  readonly confPath: string;
  readonly env: { readonly SOFTHSM2_CONF: string };
  readonly slot: number;
  readonly tokenLabel: string;
  readonly pin: string;
  readonly soPin: string;
  stop(): Promise<void>;
}

const run = promisify(execFile);
export const SOFTHSM_MODULE = process.env['SOFTHSM2_MODULE'] ?? '/usr/lib/softhsm/libsofthsm2.so';

export async function startSoftHsm(opts: { tokenLabel?: string } = {}): Promise<SoftHsm> {
  const dir = await mkdtemp(join(tmpdir(), 'softhsm-ca-'));
  const tokens = join(dir, 'tokens');
  await mkdir(tokens);
  const confPath = join(dir, 'softhsm2.conf');
  await writeFile(confPath, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
  const env = { SOFTHSM2_CONF: confPath };
  const tokenLabel = opts.tokenLabel ?? 'fleet-ca';
  const pin = '123456';
  const soPin = '12345678';
  const { stdout } = await run(
    'softhsm2-util',
    ['--init-token', '--free', '--label', tokenLabel, '--pin', pin, '--so-pin', soPin],
    { env: { ...process.env, ...env } },
  );
  const m = /reassigned to slot (\d+)/.exec(stdout);
  if (!m) throw new Error(`softhsm2-util did not report a slot: ${stdout}`);
  const stop = () => rm(dir, { recursive: true, force: true });
  track({ stop });
  return {
    modulePath: SOFTHSM_MODULE,
    confPath,
    env,
    slot: Number(m[1]),
    tokenLabel,
    pin,
    soPin,
    stop,
  };
}
