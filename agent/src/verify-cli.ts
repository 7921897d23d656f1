import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { isCodedError } from '../../common/coded-error.js';
import { pemBlocks, toPem } from '../../common/der.js';
import { verifyFromSnapshot } from './peer-verify-snapshot.js';

/**
 * `agent verify CERT.pem --data DIR [--chain FILE] [--json]`: is this certificate valid now, answered
 * without the network from what the agent in DIR cached (trust bundle, CRL, clock floor). Works while
 * the agent runs (it reads the snapshot the agent keeps, not the locked store).
 *
 * Prints `<CODE>: <reason>` (or one JSON object with `--json`). Exit codes: 0 valid, 1 not valid (the
 * code says why: REVOKED, CERT_EXPIRED, CERT_NOT_YET_VALID, CHAIN_UNTRUSTED, CRL_STALE, CRL_MISSING),
 * 2 usage or unreadable certificate file, 3 no usable verification data in DIR.
 */
export const VERIFY_USAGE = 'usage: agent verify CERT.pem --data DIR [--chain FILE] [--json]';

export interface VerifyIo {
  readonly out: (line: string) => void;
  readonly err: (line: string) => void;
  readonly now: () => number;
}

/** A peer certificate file: a leaf and at most a few intermediates. */
const MAX_CERT_FILE_BYTES = 64 * 1024;

export async function runVerify(argv: readonly string[], io: VerifyIo): Promise<number> {
  let values: { data?: string; chain?: string; json?: boolean };
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: [...argv],
      options: { data: { type: 'string' }, chain: { type: 'string' }, json: { type: 'boolean' } },
      allowPositionals: true,
      strict: true,
    }));
  } catch (e) {
    io.err(`agent verify: ${(e as Error).message}`);
    io.err(VERIFY_USAGE);
    return 2;
  }
  if (positionals.length !== 1 || !values.data) {
    io.err(VERIFY_USAGE);
    return 2;
  }
  const certFile = positionals[0] as string;
  let certs: string[];
  let extra: string[] = [];
  try {
    certs = await readCerts(certFile);
    if (values.chain) extra = await readCerts(values.chain);
  } catch (e) {
    io.err(`agent verify: ${(e as Error).message}`);
    return 2;
  }
  const [leaf, ...chain] = certs as [string, ...string[]];
  try {
    const r = await verifyFromSnapshot(values.data, leaf, { systemNow: io.now(), chain: [...chain, ...extra] });
    if (values.json) {
      io.out(JSON.stringify({ valid: r.valid, code: r.code, reason: r.reason, judgedAt: new Date(r.judgedAt).toISOString(), ...(r.crlNumber ? { crlNumber: r.crlNumber } : {}) }));
    } else {
      io.out(`${r.code}: ${r.reason}`);
    }
    return r.valid ? 0 : 1;
  } catch (e) {
    const code = isCodedError(e) ? e.code : 'AGENT_VERIFY_FAILED';
    if (values.json) io.out(JSON.stringify({ valid: false, code, reason: (e as Error).message }));
    else io.err(`agent verify: ${code}: ${(e as Error).message}`);
    return 3;
  }
}

async function readCerts(path: string): Promise<string[]> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (e) {
    throw new Error(`cannot read ${path}: ${(e as Error).message}`);
  }
  if (buf.length > MAX_CERT_FILE_BYTES) throw new Error(`${path} is larger than ${MAX_CERT_FILE_BYTES} bytes`);
  const text = buf.toString('utf8');
  const certs = pemBlocks(text, 'CERTIFICATE');
  if (certs.length === 0) throw new Error(`${path} holds no PEM certificate`);
  return certs.map((der) => toPem(der, 'CERTIFICATE'));
}
