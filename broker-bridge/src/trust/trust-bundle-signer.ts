import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { Clock } from '../../../common/clock.js';
import { CodedError } from '../../../common/coded-error.js';
import { int, literal, object, parseMessage, str } from '../../../common/protocol/schema.js';
import {
  TRUST_BUNDLE_MAX_BYTES,
  TRUST_BUNDLE_MAX_ROOTS,
  TRUST_BUNDLE_MAX_SIGNERS,
  TRUST_BUNDLE_VERSION,
  decodeTrustBundle,
  encodeTrustBundle,
  trustBundleToBeSigned,
} from '../../../common/protocol/trust-bundle.js';
import { samePublicKey, type CaBackend } from '../ca/ca-backend.js';
import { writeFileAtomic } from '../../../common/atomic-file.js';

/**
 * Signs the fleet trust bundle (common/protocol/trust-bundle.ts) with the fleet's issuing CA through
 * its CaBackend (key file or PKCS#11) and keeps its version in a small state file, so that the version
 * only ever grows:
 * - the same roots (compared by DER, in order) as the stored message: the stored message is returned
 *   again, byte for byte (no signature; the retained copy on the broker stays identical);
 * - the same roots but another signer chain (the issuing CA was renewed): re-signed under the SAME
 *   version; devices that hold it see old news, devices that do not get a signature they can check;
 * - other roots: version + 1, signed, and persisted (atomic rename) BEFORE it is returned for
 *   publishing, so a crash can never let a published version be reused for other roots.
 * One writer per state file (one bridge). Calls run one at a time, in call order.
 *
 * Before signing it checks what devices will check, and refuses a bundle they would refuse or that
 * would strand them: signer[0] must hold the backend's key; the signer chain must link up to one of
 * the roots it signs (otherwise devices that adopt the bundle could never verify the next one from
 * the same signer) and be valid now.
 *
 * Errors (TrustBundleSignerError):
 * - TRUST_BUNDLE_CONFIG_INVALID: a root or signer certificate unreadable or not a CA, too many or
 *   duplicate roots, signer[0] not the backend's key, the signer chain not reaching a root of the
 *   bundle, or a message larger than TRUST_BUNDLE_MAX_BYTES.
 * - TRUST_BUNDLE_SIGNER_NOT_VALID: a certificate of the signer chain (or the root it reaches) is
 *   expired or not yet valid at the clock's now.
 * - TRUST_BUNDLE_STATE_INVALID: the state file exists but cannot be read or parsed. Never reset
 *   silently: a version that starts again at 1 would be ignored by every device as old news.
 * - TRUST_BUNDLE_STATE_WRITE_FAILED: the new state could not be written (nothing is returned).
 * - TRUST_BUNDLE_SIGN_FAILED: the CA backend failed (its CaError is the cause; CA_BUSY and
 *   CA_BACKEND_FAILED are worth a retry).
 */
export type TrustBundleSignerErrorCode =
  | 'TRUST_BUNDLE_CONFIG_INVALID'
  | 'TRUST_BUNDLE_SIGNER_NOT_VALID'
  | 'TRUST_BUNDLE_STATE_INVALID'
  | 'TRUST_BUNDLE_STATE_WRITE_FAILED'
  | 'TRUST_BUNDLE_SIGN_FAILED';

export class TrustBundleSignerError extends CodedError<TrustBundleSignerErrorCode> {}

export interface TrustBundleSignerOptions {
  readonly backend: CaBackend;
  /** PEM: the certificate of the backend's key (the issuing CA), then intermediates up to but excluding a root. */
  readonly signerChain: readonly string[];
  /** JSON state: the current version and the message signed for it. */
  readonly stateFile: string;
  /** issuedAt, and the validity check of the signer chain. */
  readonly clock: Clock;
}

interface State {
  readonly version: number;
  /** The message as published. */
  readonly message: Buffer;
  readonly rootsDer: readonly Buffer[];
  readonly signerDer: readonly Buffer[];
}

const stateSchema = object({
  v: literal(1),
  version: int({ min: 1, max: Number.MAX_SAFE_INTEGER }),
  message: str({ max: TRUST_BUNDLE_MAX_BYTES }),
});

const fail = (code: TrustBundleSignerErrorCode, message: string, cause?: unknown): never => {
  throw new TrustBundleSignerError(code, message, cause === undefined ? undefined : { cause });
};

export class TrustBundleSigner {
  readonly #o: TrustBundleSignerOptions;
  #state: State | null | undefined; // undefined: not loaded yet; null: no state file
  #queue: Promise<unknown> = Promise.resolve();

  constructor(options: TrustBundleSignerOptions) {
    this.#o = options;
  }

  /**
   * The signed trust bundle message for `roots` (PEM, in the order devices get them), to publish
   * retained on `<base>/trust-bundle`.
   */
  message(roots: readonly string[]): Promise<Buffer> {
    const run = this.#queue.then(() => this.#message(roots));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /** The version of the last message signed or loaded; undefined before the first `message()` or with no state. */
  get version(): number | undefined {
    return this.#state?.version;
  }

  async #message(roots: readonly string[]): Promise<Buffer> {
    const { backend, signerChain, clock } = this.#o;
    const rootCerts = parseCas(roots, 'root', TRUST_BUNDLE_MAX_ROOTS);
    const signers = parseCas(signerChain, 'signer', TRUST_BUNDLE_MAX_SIGNERS);
    for (let i = 0; i < rootCerts.length; i++) {
      if (rootCerts.findIndex((r) => r.raw.equals(rootCerts[i]!.raw)) !== i) fail('TRUST_BUNDLE_CONFIG_INVALID', `root ${i} is listed twice`);
    }
    if (!samePublicKey(signers[0]!.publicKey, backend.publicKey())) {
      fail('TRUST_BUNDLE_CONFIG_INVALID', 'signer[0] does not certify the CA backend key');
    }
    const now = clock.now();
    for (const c of linkToRoot(signers, rootCerts)) {
      if (now < Date.parse(c.validFrom) || now > Date.parse(c.validTo)) {
        fail('TRUST_BUNDLE_SIGNER_NOT_VALID', `"${c.subject.replace(/\n/g, ', ')}" is valid only from ${c.validFrom} to ${c.validTo}`);
      }
    }

    const state = await this.#load();
    const rootsDer = rootCerts.map((c) => c.raw);
    const signerDer = signers.map((c) => c.raw);
    let version: number;
    if (state && sameDer(state.rootsDer, rootsDer)) {
      if (sameDer(state.signerDer, signerDer)) return state.message;
      version = state.version;
    } else {
      version = (state?.version ?? 0) + 1;
      if (!Number.isSafeInteger(version)) fail('TRUST_BUNDLE_STATE_INVALID', 'the version cannot grow any further');
    }
    const message = await signTrustBundle({ backend, signerChain, roots, version, issuedAt: now });
    try {
      await writeFileAtomic(this.#o.stateFile, JSON.stringify({ v: 1, version, message: message.toString('utf8') }) + '\n');
    } catch (e) {
      fail('TRUST_BUNDLE_STATE_WRITE_FAILED', `cannot write ${this.#o.stateFile}`, e);
    }
    this.#state = { version, message, rootsDer, signerDer };
    return message;
  }

  async #load(): Promise<State | null> {
    if (this.#state !== undefined) return this.#state;
    let text: string;
    try {
      text = await readFile(this.#o.stateFile, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return (this.#state = null);
      return fail('TRUST_BUNDLE_STATE_INVALID', `cannot read ${this.#o.stateFile}`, e);
    }
    try {
      const s = parseMessage(text, stateSchema, TRUST_BUNDLE_MAX_BYTES * 2);
      const m = decodeTrustBundle(s.message);
      if (m.version !== s.version) throw new Error('the stored message has another version');
      const der = (pems: readonly string[]) => pems.map((p) => new X509Certificate(p).raw);
      this.#state = { version: s.version, message: Buffer.from(s.message, 'utf8'), rootsDer: der(m.roots), signerDer: der(m.signer) };
      return this.#state;
    } catch (e) {
      return fail('TRUST_BUNDLE_STATE_INVALID', `${this.#o.stateFile} is not a trust bundle state file`, e);
    }
  }
}

/**
 * Builds and signs one trust bundle message, without any of TrustBundleSigner's consistency checks or
 * state: the building block, also for tests that need messages a correct signer would refuse to make.
 * Throws TRUST_BUNDLE_CONFIG_INVALID (unreadable PEM, counts, size) or TRUST_BUNDLE_SIGN_FAILED.
 */
export async function signTrustBundle(req: {
  readonly backend: Pick<CaBackend, 'sign'>;
  readonly signerChain: readonly string[];
  readonly roots: readonly string[];
  readonly version: number;
  readonly issuedAt: number;
}): Promise<Buffer> {
  const rootsDer = parse(req.roots, 'root', TRUST_BUNDLE_MAX_ROOTS).map((c) => c.raw);
  parse(req.signerChain, 'signer', TRUST_BUNDLE_MAX_SIGNERS);
  let tbs: Buffer;
  try {
    tbs = trustBundleToBeSigned(req.version, req.issuedAt, rootsDer);
  } catch (e) {
    return fail('TRUST_BUNDLE_CONFIG_INVALID', (e as Error).message, e);
  }
  let signature: Buffer;
  try {
    ({ signature } = await req.backend.sign({ tbs }));
  } catch (e) {
    return fail('TRUST_BUNDLE_SIGN_FAILED', `the CA backend did not sign the trust bundle: ${(e as Error).message}`, e);
  }
  const message = encodeTrustBundle({ v: TRUST_BUNDLE_VERSION, version: req.version, issuedAt: req.issuedAt, roots: [...req.roots], signer: [...req.signerChain], signature });
  try {
    decodeTrustBundle(message); // what devices will parse: sizes, PEM shape
  } catch (e) {
    fail('TRUST_BUNDLE_CONFIG_INVALID', `the signed trust bundle would not pass the protocol schema: ${(e as Error).message}`, e);
  }
  return message;
}

function parse(pems: readonly string[], what: string, max: number): X509Certificate[] {
  if (pems.length < 1 || pems.length > max) fail('TRUST_BUNDLE_CONFIG_INVALID', `1..${max} ${what} certificates required, got ${pems.length}`);
  return pems.map((p, i) => {
    try {
      return new X509Certificate(p);
    } catch (e) {
      return fail('TRUST_BUNDLE_CONFIG_INVALID', `${what} ${i} is not a readable certificate`, e);
    }
  });
}

function parseCas(pems: readonly string[], what: string, max: number): X509Certificate[] {
  const certs = parse(pems, what, max);
  certs.forEach((c, i) => c.ca || fail('TRUST_BUNDLE_CONFIG_INVALID', `${what} ${i} is not a CA certificate`));
  return certs;
}

/** signer[0], signer[1], …, up to and including the root of `roots` the chain reaches. */
function linkToRoot(signers: readonly X509Certificate[], roots: readonly X509Certificate[]): X509Certificate[] {
  const path: X509Certificate[] = [];
  for (const [i, cert] of signers.entries()) {
    path.push(cert);
    const root = roots.find((r) => r.raw.equals(cert.raw) || (cert.checkIssued(r) && cert.verify(r.publicKey)));
    if (root) return root.raw.equals(cert.raw) ? path : [...path, root];
    const next = signers[i + 1];
    if (next && !(cert.checkIssued(next) && cert.verify(next.publicKey))) {
      fail('TRUST_BUNDLE_CONFIG_INVALID', `signer ${i} is not issued by signer ${i + 1}`);
    }
  }
  return fail('TRUST_BUNDLE_CONFIG_INVALID', 'the signer chain does not reach any root of the bundle');
}

function sameDer(a: readonly Buffer[], b: readonly Buffer[]): boolean {
  return a.length === b.length && a.every((x, i) => x.equals(b[i]!));
}
