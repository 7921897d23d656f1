import { createHash, randomBytes, type KeyObject } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import {
  P256_OID_DER,
  p256SpkiFromPoint,
  publicKeyFromSpki,
  rawEcdsaToDer,
  type CaBackend,
  type SignRequest,
  type SignResponse,
} from './ca-backend.js';
import { CaError } from './errors.js';
import { TAG } from '../../../common/der.js';

type P11 = InstanceType<typeof pkcs11js.PKCS11>;
type Handle = Buffer;

export interface Pkcs11CaOpenRequest {
  /** Path of the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so. */
  readonly modulePath: string;
  /** Token selection: by label (preferred, stable) or by slot id. */
  readonly tokenLabel?: string;
  readonly slot?: number;
  readonly pin: string;
  /** CKA_LABEL of the CA key pair. */
  readonly keyLabel: string;
  /**
   * 'find': the key must exist (CA_KEY_NOT_FOUND otherwise). 'generate': create it inside the token,
   * CA_CONFIG_INVALID if the label is taken. 'find-or-generate': either.
   */
  readonly keyMode?: 'find' | 'generate' | 'find-or-generate';
  /** CKA_ID for a generated key; random 16 bytes when absent. */
  readonly keyId?: Buffer;
  /** Sessions in the signing pool, all sharing one login. */
  readonly sessions?: number;
  /**
   * 'async' runs C_Sign on the libuv thread pool (the event loop keeps building certificates meanwhile);
   * 'sync' blocks the event loop for each signature. Both are safe: a session never runs two operations.
   */
  readonly signMode?: 'async' | 'sync';
  /** Signing requests allowed to wait for a session before CA_BUSY. */
  readonly maxQueue?: number;
}

export interface Pkcs11CaMetrics {
  readonly signatures: number;
  readonly failures: number;
  /** CKR_OPERATION_ACTIVE ever seen. The pool exists so this stays 0; anything else is a bug. */
  readonly operationActive: number;
  readonly sessions: number;
  readonly waiting: number;
  readonly maxWaiting: number;
}

interface Session {
  handle: Handle;
  /** Per-session output buffer: safe because a session is lent to one signature at a time. */
  readonly out: Buffer;
}

interface Waiter {
  resolve(s: Session): void;
  reject(e: unknown): void;
}

/**
 * One pkcs11js instance (one C_Initialize) per module path and process, shared by every Pkcs11Ca.
 * C_Finalize tears down all sessions of the process, so it runs only when the last user closes.
 */
interface LoadedModule {
  readonly p11: P11;
  refs: number;
  /** False when someone else in the process had already initialized the library. */
  readonly owned: boolean;
}
const modules = new Map<string, LoadedModule>();

function acquireModule(modulePath: string): LoadedModule {
  const existing = modules.get(modulePath);
  if (existing) {
    existing.refs++;
    return existing;
  }
  const p11 = new pkcs11js.PKCS11();
  try {
    p11.load(modulePath);
  } catch (e) {
    throw new CaError('CA_CONFIG_INVALID', `cannot load PKCS#11 module ${modulePath}`, { cause: e });
  }
  let owned = true;
  try {
    // OS locking: async C_Sign calls enter the module from thread-pool threads.
    p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (e) {
    if (ckr(e) !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
      safe(() => p11.close());
      throw new CaError('CA_BACKEND_FAILED', 'C_Initialize failed', { cause: e });
    }
    owned = false;
  }
  const m: LoadedModule = { p11, refs: 1, owned };
  modules.set(modulePath, m);
  return m;
}

function releaseModule(modulePath: string): void {
  const m = modules.get(modulePath);
  if (!m || --m.refs > 0) return;
  modules.delete(modulePath);
  if (m.owned) safe(() => m.p11.C_Finalize());
  safe(() => m.p11.close());
}

function ckr(e: unknown): number | undefined {
  return e instanceof pkcs11js.Pkcs11Error ? e.code : undefined;
}

function ckrName(e: unknown): string | undefined {
  return e instanceof pkcs11js.Pkcs11Error ? e.message : undefined;
}

function safe(fn: () => void): void {
  try {
    fn();
  } catch {
    // teardown best effort
  }
}

const ECDSA: pkcs11js.Mechanism = { mechanism: pkcs11js.CKM_ECDSA };

/**
 * CA key inside a PKCS#11 token. The private key is generated in the token (sensitive,
 * non-extractable) and only ever referenced by handle. Signing borrows a session from a pool, so
 * concurrent requests never share a session (a PKCS#11 session runs one operation at a time).
 */
export class Pkcs11Ca implements CaBackend {
  readonly kind = 'pkcs11' as const;
  readonly algorithm = 'ECDSA-P256-SHA256' as const;
  readonly keyLabel: string;
  readonly #modulePath: string;
  readonly #p11: P11;
  readonly #slot: Handle;
  readonly #privateKey: Handle;
  readonly #publicKey: KeyObject;
  readonly #signMode: 'async' | 'sync';
  readonly #maxQueue: number;
  readonly #all: Session[];
  readonly #free: Session[];
  readonly #waiters: Waiter[] = [];
  #inflight = 0;
  #drained: (() => void) | undefined;
  #closed = false;
  #signatures = 0;
  #failures = 0;
  #operationActive = 0;
  #maxWaiting = 0;

  private constructor(init: {
    modulePath: string;
    p11: P11;
    slot: Handle;
    sessions: Session[];
    privateKey: Handle;
    publicKey: KeyObject;
    keyLabel: string;
    signMode: 'async' | 'sync';
    maxQueue: number;
  }) {
    this.#modulePath = init.modulePath;
    this.#p11 = init.p11;
    this.#slot = init.slot;
    this.#all = init.sessions;
    this.#free = [...init.sessions];
    this.#privateKey = init.privateKey;
    this.#publicKey = init.publicKey;
    this.keyLabel = init.keyLabel;
    this.#signMode = init.signMode;
    this.#maxQueue = init.maxQueue;
  }

  static async open(req: Pkcs11CaOpenRequest): Promise<Pkcs11Ca> {
    const nSessions = req.sessions ?? 4;
    if (!Number.isInteger(nSessions) || nSessions < 1 || nSessions > 256) {
      throw new CaError('CA_CONFIG_INVALID', 'sessions must be an integer in 1..256');
    }
    if (!req.keyLabel) throw new CaError('CA_CONFIG_INVALID', 'keyLabel is required');
    const mod = acquireModule(req.modulePath);
    const p11 = mod.p11;
    const sessions: Session[] = [];
    try {
      const slot = findSlot(p11, req);
      for (let i = 0; i < nSessions; i++) {
        const handle = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
        sessions.push({ handle, out: Buffer.alloc(132) });
      }
      const s0 = (sessions[0] as Session).handle;
      login(p11, s0, req.pin);
      const mode = req.keyMode ?? 'find';
      let key = findKey(p11, s0, req.keyLabel);
      if (key) {
        if (mode === 'generate') throw new CaError('CA_CONFIG_INVALID', `key label ${req.keyLabel} already exists`);
      } else {
        if (mode === 'find') throw new CaError('CA_KEY_NOT_FOUND', `no key labelled ${req.keyLabel} in the token`);
        key = generateKey(p11, s0, req.keyLabel, req.keyId ?? randomBytes(16));
      }
      checkPrivateKey(p11, s0, key.privateKey);
      const publicKey = readPublicKey(p11, s0, key.publicKey);
      return new Pkcs11Ca({
        modulePath: req.modulePath,
        p11,
        slot,
        sessions,
        privateKey: key.privateKey,
        publicKey,
        keyLabel: req.keyLabel,
        signMode: req.signMode ?? 'async',
        maxQueue: req.maxQueue ?? 4096,
      });
    } catch (e) {
      for (const s of sessions) safe(() => p11.C_CloseSession(s.handle));
      releaseModule(req.modulePath);
      if (e instanceof CaError) throw e;
      throw new CaError('CA_BACKEND_FAILED', `PKCS#11 setup failed: ${ckrName(e) ?? String(e)}`, { cause: e });
    }
  }

  publicKey(): KeyObject {
    return this.#publicKey;
  }

  metrics(): Pkcs11CaMetrics {
    return {
      signatures: this.#signatures,
      failures: this.#failures,
      operationActive: this.#operationActive,
      sessions: this.#all.length,
      waiting: this.#waiters.length,
      maxWaiting: this.#maxWaiting,
    };
  }

  async sign(req: SignRequest): Promise<SignResponse> {
    if (this.#closed) throw new CaError('CA_BACKEND_FAILED', 'PKCS#11 CA backend is closed');
    const digest = createHash('sha256').update(req.tbs).digest();
    this.#inflight++;
    try {
      let s = this.#free.pop();
      if (!s) s = await this.#wait();
      let raw: Buffer;
      try {
        // SignInit and Sign run back to back on a session nobody else holds until release.
        this.#p11.C_SignInit(s.handle, ECDSA, this.#privateKey);
        raw =
          this.#signMode === 'async'
            ? await this.#p11.C_SignAsync(s.handle, digest, s.out)
            : this.#p11.C_Sign(s.handle, digest, s.out);
      } catch (e) {
        this.#failures++;
        if (ckr(e) === pkcs11js.CKR_OPERATION_ACTIVE) this.#operationActive++;
        this.#replaceSession(s);
        throw new CaError('CA_BACKEND_FAILED', `PKCS#11 signing failed: ${ckrName(e) ?? String(e)}`, { cause: e });
      }
      try {
        const signature = rawEcdsaToDer(raw); // copies out of s.out before the session is lent again
        this.#signatures++;
        return { signature };
      } finally {
        this.#release(s);
      }
    } finally {
      if (--this.#inflight === 0 && this.#drained) this.#drained();
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const err = new CaError('CA_BACKEND_FAILED', 'PKCS#11 CA backend is closed');
    for (const w of this.#waiters.splice(0)) w.reject(err);
    if (this.#inflight > 0) await new Promise<void>((r) => (this.#drained = r));
    for (const s of this.#all.splice(0)) safe(() => this.#p11.C_CloseSession(s.handle));
    this.#free.length = 0;
    releaseModule(this.#modulePath);
  }

  #wait(): Promise<Session> {
    if (this.#all.length === 0) {
      return Promise.reject(new CaError('CA_BACKEND_FAILED', 'no usable PKCS#11 session left'));
    }
    if (this.#waiters.length >= this.#maxQueue) {
      return Promise.reject(new CaError('CA_BUSY', 'too many signing requests waiting', { details: { retryable: true } }));
    }
    return new Promise<Session>((resolve, reject) => {
      this.#waiters.push({ resolve, reject });
      if (this.#waiters.length > this.#maxWaiting) this.#maxWaiting = this.#waiters.length;
    });
  }

  #release(s: Session): void {
    const w = this.#waiters.shift();
    if (w) w.resolve(s);
    else this.#free.push(s);
  }

  /**
   * After a failed operation the session's state is unknown (PKCS#11 2.40 cannot cancel an active
   * operation), so it is swapped for a fresh one. The new session opens before the old one closes so
   * the login, which lives as long as any session of the application, is never dropped.
   */
  #replaceSession(s: Session): void {
    const idx = this.#all.indexOf(s);
    try {
      const handle = this.#p11.C_OpenSession(this.#slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
      safe(() => this.#p11.C_CloseSession(s.handle));
      s.handle = handle;
      this.#release(s);
    } catch {
      safe(() => this.#p11.C_CloseSession(s.handle));
      if (idx >= 0) this.#all.splice(idx, 1);
      if (this.#all.length === 0) {
        const err = new CaError('CA_BACKEND_FAILED', 'no usable PKCS#11 session left');
        for (const w of this.#waiters.splice(0)) w.reject(err);
      }
    }
  }
}

function findSlot(p11: P11, req: Pkcs11CaOpenRequest): Handle {
  const slots = p11.C_GetSlotList(true);
  if (req.tokenLabel !== undefined) {
    const matches = slots.filter((s) => p11.C_GetTokenInfo(s).label.trim() === req.tokenLabel);
    if (matches.length !== 1) {
      throw new CaError('CA_CONFIG_INVALID', `expected one token labelled ${req.tokenLabel}, found ${matches.length}`);
    }
    return matches[0] as Handle;
  }
  if (req.slot !== undefined) {
    const want = BigInt(req.slot);
    const match = slots.find((s) => handleValue(s) === want);
    if (!match) throw new CaError('CA_CONFIG_INVALID', `no token in slot ${req.slot}`);
    return match;
  }
  throw new CaError('CA_CONFIG_INVALID', 'tokenLabel or slot is required');
}

function handleValue(h: Handle): bigint {
  return h.length >= 8 ? h.readBigUInt64LE(0) : BigInt(h.readUIntLE(0, h.length));
}

function login(p11: P11, session: Handle, pin: string): void {
  try {
    p11.C_Login(session, pkcs11js.CKU_USER, pin);
  } catch (e) {
    const code = ckr(e);
    if (code === pkcs11js.CKR_USER_ALREADY_LOGGED_IN) return;
    if (code === pkcs11js.CKR_PIN_INCORRECT || code === pkcs11js.CKR_PIN_LEN_RANGE) {
      throw new CaError('CA_CONFIG_INVALID', 'token PIN rejected', { cause: e });
    }
    throw e;
  }
}

function findObjects(p11: P11, session: Handle, template: pkcs11js.Template): Handle[] {
  p11.C_FindObjectsInit(session, template);
  try {
    return p11.C_FindObjects(session, 4);
  } finally {
    p11.C_FindObjectsFinal(session);
  }
}

function findKey(p11: P11, session: Handle, label: string): { privateKey: Handle; publicKey: Handle } | undefined {
  const privs = findObjects(p11, session, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
    { type: pkcs11js.CKA_LABEL, value: label },
  ]);
  if (privs.length === 0) return undefined;
  if (privs.length > 1) throw new CaError('CA_CONFIG_INVALID', `several private keys labelled ${label}`);
  const privateKey = privs[0] as Handle;
  const [idAttr] = p11.C_GetAttributeValue(session, privateKey, [{ type: pkcs11js.CKA_ID }]);
  const pubTemplate: pkcs11js.Template = [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
    { type: pkcs11js.CKA_LABEL, value: label },
  ];
  if (idAttr?.value.length) pubTemplate.push({ type: pkcs11js.CKA_ID, value: idAttr.value });
  const pubs = findObjects(p11, session, pubTemplate);
  if (pubs.length !== 1) {
    throw new CaError('CA_KEY_NOT_FOUND', `expected one public key labelled ${label}, found ${pubs.length}`);
  }
  return { privateKey, publicKey: pubs[0] as Handle };
}

function generateKey(p11: P11, session: Handle, label: string, id: Buffer): { privateKey: Handle; publicKey: Handle } {
  const common: pkcs11js.Template = [
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_ID, value: id },
  ];
  return p11.C_GenerateKeyPair(
    session,
    { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN },
    [
      ...common,
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
      { type: pkcs11js.CKA_PRIVATE, value: false },
      { type: pkcs11js.CKA_VERIFY, value: true },
      { type: pkcs11js.CKA_EC_PARAMS, value: P256_OID_DER },
    ],
    [
      ...common,
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_SIGN, value: true },
      { type: pkcs11js.CKA_SENSITIVE, value: true },
      { type: pkcs11js.CKA_EXTRACTABLE, value: false },
    ],
  );
}

/** A CA key that could leave the token is refused, whoever created it. */
function checkPrivateKey(p11: P11, session: Handle, key: Handle): void {
  const attrs = p11.C_GetAttributeValue(session, key, [
    { type: pkcs11js.CKA_KEY_TYPE },
    { type: pkcs11js.CKA_SIGN },
    { type: pkcs11js.CKA_SENSITIVE },
    { type: pkcs11js.CKA_EXTRACTABLE },
    { type: pkcs11js.CKA_EC_PARAMS },
  ]);
  const [keyType, sign, sensitive, extractable, params] = attrs.map((a) => a.value);
  if (!keyType || keyType.readUIntLE(0, Math.min(6, keyType.length)) !== pkcs11js.CKK_EC) {
    throw new CaError('CA_CONFIG_INVALID', 'CA key is not an EC key');
  }
  if (!params?.equals(P256_OID_DER)) throw new CaError('CA_CONFIG_INVALID', 'CA key is not on P-256');
  if (sign?.[0] !== 1) throw new CaError('CA_CONFIG_INVALID', 'CA key cannot sign (CKA_SIGN false)');
  if (sensitive?.[0] !== 1 || extractable?.[0] !== 0) {
    throw new CaError('CA_KEY_PERMISSIONS', 'CA key must be CKA_SENSITIVE and not CKA_EXTRACTABLE');
  }
}

function readPublicKey(p11: P11, session: Handle, key: Handle): KeyObject {
  const [paramsAttr, pointAttr] = p11.C_GetAttributeValue(session, key, [
    { type: pkcs11js.CKA_EC_PARAMS },
    { type: pkcs11js.CKA_EC_POINT },
  ]);
  if (!paramsAttr?.value.equals(P256_OID_DER)) throw new CaError('CA_CONFIG_INVALID', 'CA public key is not on P-256');
  let point = pointAttr?.value ?? Buffer.alloc(0);
  // PKCS#11 says DER OCTET STRING; some modules return the bare point.
  if (point.length === 67 && point[0] === TAG.OCTET_STRING && point[1] === 65) point = point.subarray(2);
  try {
    return publicKeyFromSpki(p256SpkiFromPoint(point));
  } catch (e) {
    if (e instanceof CaError) throw e;
    throw new CaError('CA_CONFIG_INVALID', 'CA public key point is invalid', { cause: e });
  }
}
