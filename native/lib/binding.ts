/**
 * The raw native addon (native/src, built to native/build/Release/tpm_native.node): a thin binding to
 * tpm2-tss ESAPI. It takes and returns marshalled TPM structures as Buffers; the TypeScript layer builds
 * templates, parses results and validates arguments. Every async method rejects with an Error that has
 * either `rc` (a TSS2_RC; `code` unset — map it with codeForRc in tpm-error.ts) or a misuse `code`:
 * 'TPM_CLOSED' | 'TPM_UNKNOWN_HANDLE' | 'TPM_BAD_ARGUMENT' | 'TPM_ENGINE'. Use toTpmError() on anything
 * caught from here.
 *
 * Per context, calls run one at a time in FIFO order on the libuv thread pool. An idle context does
 * not keep the event loop alive.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TpmError } from './tpm-error.js';

/** ESYS_TR of one context (opaque number, valid only with the context that returned it). */
export type EsysHandle = number;

export interface RawBinding {
  /**
   * Tss2_TctiLdr_Initialize(tcti) + Esys_Initialize + Esys_Startup(CLEAR) (TPM2_RC_INITIALIZE ignored).
   * tcti e.g. "swtpm:host=127.0.0.1,port=2321", "device:/dev/tpmrm0", "tabrmd:bus_type=session".
   * An unreachable TPM rejects with the TCTI's rc (e.g. TSS2_TCTI_RC_IO_ERROR).
   */
  open(tcti: string): Promise<RawContext>;
  /** Id of the OpenSSL ENGINE registered at load ("tpmfleet"), for tls.connect({ privateKeyEngine }). */
  readonly engineId: string;
  /** Tss2_RC_Decode. */
  rcDecode(rc: number): string;
  /**
   * Synchronous sd_notify(3): sends `state` as one datagram to the AF_UNIX socket in $NOTIFY_SOCKET (a
   * path, or '@name' in the abstract namespace), never blocking. false when NOTIFY_SOCKET is unset or
   * empty. Throws SD_NOTIFY_BAD_SOCKET (not an absolute path or '@name', or too long for sun_path),
   * SD_NOTIFY_FAILED (socket/sendto failed; the message has the errno text, `errno` its number),
   * TPM_BAD_ARGUMENT (not a string, or empty). Use it through sd-notify.ts.
   */
  sdNotify(state: string): boolean;
}

export interface RawContext {
  readonly closed: boolean;
  /** Loops TPM2_GetRandom until `n` bytes (n ≤ 65535 here; callers keep it ≤ 1024). */
  getRandom(n: number): Promise<Buffer>;
  /** `data`: marshalled TPMS_CAPABILITY_DATA. */
  getCapability(capability: number, property: number, count: number): Promise<{ moreData: boolean; data: Buffer }>;
  /** `selection` in and out: marshalled TPML_PCR_SELECTION; `digests`: marshalled TPML_DIGEST. */
  pcrRead(selection: Buffer): Promise<{ updateCounter: number; selection: Buffer; digests: Buffer }>;
  /**
   * Whole contents of an NV index (read in chunks of TPM2_PT_NV_BUFFER_MAX), authorized by the index
   * itself (AUTHREAD, empty auth), else by the owner hierarchy. Null when the index does not exist.
   */
  nvRead(nvIndex: number): Promise<Buffer | null>;
  /**
   * TPM factories only. TPM2_NV_DefineSpace of `nvIndex` (0x01xxxxxx) with `attributes` (TPMA_NV) and
   * `dataSize` bytes, empty authValue, no authPolicy, nameAlg SHA-256. hierarchy: TPM2_RH_PLATFORM
   * 0x4000000C (the index then needs TPMA_NV_PLATFORMCREATE) | TPM2_RH_OWNER 0x40000001; its
   * authorization is the hierarchy's (empty) auth value in a password session.
   */
  nvDefineSpace(hierarchy: number, nvIndex: number, attributes: number, dataSize: number): Promise<void>;
  /**
   * TPM factories only. Writes `data` (1..65535 bytes) from offset 0 in chunks of
   * TPM2_PT_NV_BUFFER_MAX, authorized by the first write role the index allows: platform (PPWRITE),
   * owner (OWNERWRITE), else the index itself (AUTHWRITE), each with an empty auth value. `lock`:
   * then TPM2_NV_WriteLock with the same authorization (permanent with TPMA_NV_WRITEDEFINE).
   */
  nvWrite(nvIndex: number, data: Buffer, lock: boolean): Promise<void>;
  /**
   * hierarchy: TPM2_RH_OWNER 0x40000001 | TPM2_RH_ENDORSEMENT 0x4000000B | TPM2_RH_NULL 0x40000007
   * (| TPM2_RH_PLATFORM 0x4000000C). template: marshalled TPM2B_PUBLIC. Returns the marshalled
   * TPM2B_PUBLIC and the Name (no size prefix). The handle is tracked until flushed.
   */
  createPrimary(hierarchy: number, template: Buffer): Promise<{ handle: EsysHandle; public: Buffer; name: Buffer }>;
  /** Marshalled TPM2B_PRIVATE / TPM2B_PUBLIC of a new object under `parent` (not loaded). */
  create(parent: EsysHandle, template: Buffer): Promise<{ private: Buffer; public: Buffer }>;
  /** priv: marshalled TPM2B_PRIVATE, pub: marshalled TPM2B_PUBLIC. */
  load(parent: EsysHandle, priv: Buffer, pub: Buffer): Promise<{ handle: EsysHandle; name: Buffer }>;
  readPublic(handle: EsysHandle): Promise<{ public: Buffer; name: Buffer }>;
  /**
   * Esys_TR_FromTPMPublic for a persistent handle (0x81xxxxxx); null if nothing is there. ESAPI reuses
   * the ESYS_TR it already has for that handle, so two calls may return the same number: each return
   * counts as one reference, and flush() drops one (Esys_TR_Close only with the last).
   */
  fromPersistent(tpmHandle: number): Promise<EsysHandle | null>;
  /**
   * Flushes transient objects and loaded sessions that this context did not create (left by a dead
   * process on a TPM without resource manager); resolves how many were flushed.
   */
  flushForeign(): Promise<number>;
  /**
   * Owner auth. Transient → persistent at `persistentHandle`: resolves the new persistent handle (the
   * transient one stays loaded and tracked). Persistent → evicted (`persistentHandle` ignored): null,
   * and every reference to that handle becomes unknown.
   */
  evictControl(handle: EsysHandle, persistentHandle: number): Promise<EsysHandle | null>;
  /**
   * Transient: Esys_FlushContext; persistent: Esys_TR_Close (the object stays in the TPM). Untracks it
   * and makes TLS keys registered on it fail. close() does NOT flush: without a resource manager
   * (swtpm) unflushed transient objects stay in the TPM after the context is gone.
   */
  flush(handle: EsysHandle): Promise<void>;
  /**
   * TPM2_Sign over a digest (1..64 bytes), validation ticket HASHCHECK/RH_NULL.
   * hashAlg: TPM2_ALG_SHA256 0x000B | SHA384 0x000C | SHA512 0x000D; sigAlg: TPM2_ALG_ECDSA 0x0018 |
   * TPM2_ALG_RSASSA 0x0014 (| TPM2_ALG_NULL 0x0010: the key's scheme). Returns a marshalled TPMT_SIGNATURE.
   */
  sign(key: EsysHandle, digest: Buffer, hashAlg: number, sigAlg: number): Promise<Buffer>;
  /** inScheme NULL (the signer's scheme); `attest` is the TPMS_ATTEST bytes, `signature` a marshalled TPMT_SIGNATURE. */
  certify(object: EsysHandle, signer: EsysHandle, qualifyingData: Buffer): Promise<{ attest: Buffer; signature: Buffer }>;
  /** pcrSelection: marshalled TPML_PCR_SELECTION. */
  quote(signer: EsysHandle, qualifyingData: Buffer, pcrSelection: Buffer): Promise<{ attest: Buffer; signature: Buffer }>;
  /**
   * `activate` (AK) with a password session; `key` (EK) with a policy session satisfying
   * PolicySecret(TPM_RH_ENDORSEMENT). The session is kept for the next call (continueSession: the TPM
   * resets its policy after each use) and flushed after any failure and on close. credentialBlob: marshalled
   * TPM2B_ID_OBJECT; secret: marshalled TPM2B_ENCRYPTED_SECRET. Resolves the certInfo bytes.
   * sessionHash: the policy session's hash (the EK's nameAlg; default SHA-256). policyOr: a marshalled
   * TPML_DIGEST; when given, PolicyOR over it follows PolicySecret (TCG high-range EKs' PolicyB).
   */
  activateCredential(
    activate: EsysHandle,
    key: EsysHandle,
    credentialBlob: Buffer,
    secret: Buffer,
    sessionHash?: number,
    policyOr?: Buffer,
  ): Promise<Buffer>;
  /**
   * Synchronous. `publicArea`: marshalled TPM2B_PUBLIC of an unrestricted ECC NIST P-256 signing key
   * loaded as `key`. Returns the id for tls.connect({ privateKeyEngine: engineId, privateKeyIdentifier }).
   * Throws TPM_CLOSED / TPM_UNKNOWN_HANDLE / TPM_BAD_ARGUMENT / TPM_ENGINE.
   */
  registerTlsKey(key: EsysHandle, publicArea: Buffer): string;
  /** Idempotent. TLS contexts that already loaded the key fail their next signature. */
  unregisterTlsKey(id: string): void;
  /** Waits for queued work, then Esys_Finalize + Tss2_TctiLdr_Finalize. Idempotent. */
  close(): Promise<void>;
}

const ADDON_FILE = 'tpm_native.node';
let cached: RawBinding | undefined;

/** Candidate paths, in order: $TPM_NATIVE_ADDON, then relative to this file (source tree or dist bundle). */
export function addonCandidates(): string[] {
  const fromEnv = process.env['TPM_NATIVE_ADDON'];
  if (fromEnv) return [resolve(fromEnv)];
  const here = dirname(fileURLToPath(import.meta.url));
  return [
    resolve(here, '../build/Release', ADDON_FILE), // native/lib/binding.ts
    resolve(here, ADDON_FILE), // dist/<bundle>.mjs with the addon copied next to it
    resolve(here, '../native/build/Release', ADDON_FILE), // dist/ next to the repo's native/
  ];
}

/** Loads (once) the native addon. Throws TpmError 'TPM_ADDON_NOT_FOUND' listing the paths tried. */
export function loadBinding(): RawBinding {
  if (cached) return cached;
  const tried = addonCandidates();
  const nodeRequire = createRequire(import.meta.url);
  for (const path of tried) {
    if (!existsSync(path)) continue;
    try {
      cached = nodeRequire(path) as RawBinding;
      return cached;
    } catch (e) {
      throw new TpmError('TPM_ADDON_NOT_FOUND', `cannot load TPM addon ${path}: ${(e as Error).message}`, { cause: e });
    }
  }
  throw new TpmError(
    'TPM_ADDON_NOT_FOUND',
    `TPM addon ${ADDON_FILE} not found (build it with npm run build:native); tried: ${tried.join(', ')}`,
  );
}
