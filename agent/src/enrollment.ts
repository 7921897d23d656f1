import { randomBytes } from 'node:crypto';
import type { Clock } from '../../common/clock.js';
import { CodedError } from '../../common/coded-error.js';
import type { RejectionCode } from '../../common/protocol/errors.js';
import { decode, encode, type EnrollAccepted, type EnrollChallenge, type EnrollRequest, type Rejection } from '../../common/protocol/messages.js';
import type { DeviceTopic, Topics } from '../../common/protocol/topics.js';
import { preferredEk } from '../../native/lib/ek-order.js';
import type { EkKind, KeyBlobs, Tpm, TpmKey } from '../../native/lib/tpm.js';
import { Backoff, throwIfAborted, type Sleep } from './backoff.js';
import { enrollAddressing, exchange, type Answer as ExchangeAnswer, type Link } from './exchange.js';
import type { BootstrapConfig } from './config.js';
import { buildTpmCsr } from './csr.js';
import { acceptIssued } from './issued-certificate.js';
import { reactionTo } from './policy.js';
import { countSignatures } from './signature-counter.js';
import type { AgentStore, IdentitySlot, PendingEnrollment, SentEnvelope, SlotName, StoredBlobs } from './store.js';

/**
 * Enrollment, device side (protocol: docs/protocol.md): enroll → challenge → proof → accepted. Also
 * re-attestation (mode 'reattest'): the same exchange without a token, for a device that enrolled once
 * and whose identity expired while it was offline or became unusable.
 *
 * Resumable: the identity key is stored in `pending` right after it is created, and every message is
 * stored there before it is sent. A restarted agent resends the same bytes under the same requestId
 * and the bridge answers a repeated requestId with its first answer: one key, one certificate, the
 * token used once, whenever the agent was killed.
 *
 * Reactions (policy.ts `reactionTo`, a closed mapping):
 * - no answer or no connection: back off (capped, full jitter) and resend the same envelope, forever;
 * - retryable (RATE_LIMITED, UNAVAILABLE, INTERNAL): wait retryAfterSec (else backoff), resend;
 * - CHALLENGE_UNKNOWN / CHALLENGE_EXPIRED: start over with a new requestId, same key, CSR and token;
 * - anything else: AGENT_ENROLLMENT_REJECTED carrying the code (the agent stays up and reports it).
 *
 * TPM signatures: CSR 1, certify 1 (again only if a restart or a new challenge forces it).
 */
export type EnrollmentErrorCode =
  | 'AGENT_ENROLLMENT_REJECTED'
  | 'AGENT_ENROLLMENT_GAVE_UP'
  | 'AGENT_NO_EK_CERTIFICATE'
  | 'AGENT_PROTOCOL_ERROR';

export class EnrollmentError extends CodedError<EnrollmentErrorCode> {
  /** The bridge's rejection code, for AGENT_ENROLLMENT_REJECTED. */
  readonly rejection: RejectionCode | undefined;
  constructor(code: EnrollmentErrorCode, message: string, opts?: { rejection?: RejectionCode; cause?: unknown }) {
    super(code, message, opts?.cause === undefined ? undefined : { cause: opts.cause });
    this.rejection = opts?.rejection;
  }
}

export interface EnrollmentLog {
  (msg: string, fields?: Record<string, unknown>): void;
}

export interface EnrollmentDeps {
  readonly tpm: Tpm;
  readonly srk: TpmKey;
  /** The loaded attestation key (owned by the caller). */
  readonly ak: TpmKey;
  readonly store: AgentStore;
  /** The enrollment listener (server-authenticated TLS), connected under `clientId`. */
  readonly link: Link;
  /**
   * The attempt's random `enr-…` client id (`newEnrollClientId()`); it addresses the enrollment topics.
   * A resumed attempt keeps the one stored in `pending` (the bridge answers a repeat to the same id),
   * so callers take `pending.clientId` when there is one (`enrollClientIdFor`).
   */
  readonly clientId: string;
  /** 'token' (first enrollment, bootstrap token) or 'reattest' (no token). Default 'token'. */
  readonly mode?: 'token' | 'reattest';
  /** For re-attestation: the slot of the identity being replaced (deleted when the new one is stored). */
  readonly retire?: SlotName;
  /** Roots the issued certificate must chain to; default the bootstrap trust bundle. */
  readonly trustBundle?: readonly string[];
  /** Called with the verified identity before it is stored (the agent queues its event there). */
  readonly onIssued?: (identity: IdentitySlot, slot: SlotName) => Promise<void>;
  readonly topics: Topics;
  readonly config: BootstrapConfig;
  readonly clock: Clock;
  readonly sleep: Sleep;
  readonly signal?: AbortSignal;
  /** Wait for an answer per publication. Default 15 000. */
  readonly responseTimeoutMs?: number;
  /** Rejected attempts (retryable codes, lost challenges) before AGENT_ENROLLMENT_GAVE_UP. Default: never. Timeouts and outages never count. */
  readonly maxAttempts?: number;
  readonly backoff?: Backoff;
  readonly log?: EnrollmentLog;
}

export interface EnrollmentResult {
  /** The identity key, still loaded: the caller owns it from here (TLS, then flush). */
  readonly key: TpmKey;
  readonly slot: SlotName;
  readonly identity: IdentitySlot;
  readonly trustBundle: readonly string[];
  /** TPM signing operations this enrollment run asked for (CSR, certify). */
  readonly tpmSignatures: number;
  /** Messages sent, counting resends after rejections and timeouts. */
  readonly messagesSent: number;
  /** True when this run continued an enrollment a previous process had started. */
  readonly resumed: boolean;
}

export const toStored = (b: KeyBlobs): StoredBlobs => ({ private: b.private.toString('base64'), public: b.public.toString('base64') });
export const fromStored = (b: StoredBlobs): KeyBlobs => ({ private: Buffer.from(b.private, 'base64'), public: Buffer.from(b.public, 'base64') });

const newRequestId = () => randomBytes(12).toString('base64url');

/** A fresh enrollment client id: `enr-` and 128 random bits. */
export const newEnrollClientId = (): string => `enr-${randomBytes(16).toString('base64url')}`;

/** The client id an enrollment run must use: the stored attempt's, else a fresh one. */
export async function enrollClientIdFor(store: AgentStore, mode: 'token' | 'reattest'): Promise<string> {
  const p = await store.getPending();
  return p?.kind === 'enroll' && (p.mode ?? 'token') === mode && p.clientId ? p.clientId : newEnrollClientId();
}
const envelope = (requestId: string, payload: Buffer): SentEnvelope => ({ requestId, payload: payload.toString('base64') });

export function enroll(deps: EnrollmentDeps): Promise<EnrollmentResult> {
  return new EnrollmentRun(deps).run();
}

type Answer =
  | { readonly kind: 'challenge'; readonly body: EnrollChallenge }
  | { readonly kind: 'accepted'; readonly body: EnrollAccepted }
  | { readonly kind: 'rejected'; readonly error: Rejection['error'] };

/** One enrollment attempt sequence; owns the TPM objects it loads (key until success, EK always). */
class EnrollmentRun {
  readonly #d: EnrollmentDeps;
  readonly #tpm: Tpm;
  readonly #signatures: () => number;
  readonly #backoff: Backoff;
  readonly #log: EnrollmentLog;
  #key: TpmKey | undefined;
  #ek: TpmKey | undefined;
  #sent = 0;
  #failures = 0;

  constructor(deps: EnrollmentDeps) {
    this.#d = deps;
    const counted = countSignatures(deps.tpm);
    this.#tpm = counted.tpm;
    this.#signatures = counted.signatures;
    this.#backoff = deps.backoff ?? new Backoff();
    this.#log = deps.log ?? (() => undefined);
  }

  async run(): Promise<EnrollmentResult> {
    try {
      return await this.#run();
    } catch (e) {
      // The key stays recoverable from `pending`; don't leave it in a TPM slot (swtpm has three).
      if (this.#key) await this.#tpm.flush(this.#key).catch(() => undefined);
      this.#key = undefined;
      throw e;
    } finally {
      await this.#flushEk();
    }
  }

  get #clientId(): string {
    return this.#d.clientId;
  }

  async #run(): Promise<EnrollmentResult> {
    const found = await this.#d.store.getPending();
    const stored = found?.kind === 'enroll' && (found.mode ?? 'token') === this.#mode ? found : undefined;
    if (found && !stored) {
      // A rotation, or an enrollment of the other mode, that this one replaces: its key was never certified.
      await this.#d.store.deletePending();
      this.#log('discarding an unfinished exchange', { kind: found.kind });
    }
    const resumed = stored !== undefined;
    let p = stored ?? (await this.#begin());
    if (resumed) {
      this.#key = await this.#tpm.loadKey(this.#d.srk, fromStored(p.key));
      this.#log('resuming enrollment', { requestId: p.request?.requestId, proofSent: p.proof !== undefined });
    }
    if (!p.proof && this.#tokenChanged(p)) p = await this.#newRequest(p);

    for (;;) {
      throwIfAborted(this.#d.signal);
      if (p.proof) {
        const a = await this.#send('enrollProof', p.proof, ['enrollAccepted', 'enrollRejected']);
        if (a.kind === 'accepted') return this.#finish(p, a.body, resumed);
        p = await this.#react(p, a);
      } else {
        const sent = p.request ? p : await this.#newRequest(p);
        const a = await this.#send('enroll', sent.request!, ['enrollChallenge', 'enrollRejected']);
        p = a.kind === 'challenge' ? await this.#answer(sent, a.body) : await this.#react(sent, a);
      }
    }
  }

  /** A fresh identity key, stored before anything else happens so a restart never makes a second one. */
  async #begin(): Promise<PendingEnrollment> {
    const slot = await this.#d.store.freeSlot();
    const created = await this.#tpm.createIdentityKey(this.#d.srk);
    this.#key = created.key;
    const p: PendingEnrollment = { kind: 'enroll', mode: this.#mode, clientId: this.#d.clientId, slot, key: toStored(created.blobs), startedAt: this.#d.clock.now() };
    await this.#d.store.putPending(p);
    this.#log('identity key created', { slot });
    return p;
  }

  get #mode(): 'token' | 'reattest' {
    return this.#d.mode ?? 'token';
  }

  #tokenChanged(p: PendingEnrollment): boolean {
    if (!p.request || this.#mode === 'reattest') return false;
    // The operator may have re-provisioned the device with a new token after the old one was refused.
    return decode('enroll', Buffer.from(p.request.payload, 'base64')).body.token !== this.#d.config.token;
  }

  /**
   * Builds (or rebuilds, with a new requestId) the enroll envelope and stores it before it is sent.
   * Key, CSR and EK kind carry over; any earlier request, challenge and proof are dropped.
   */
  async #newRequest(p: PendingEnrollment): Promise<PendingEnrollment> {
    const ekKind = p.ekKind ?? (await this.#findEkKind());
    const csr = p.csr ?? (await buildTpmCsr(this.#tpm, this.#key!, this.#d.config.deviceId)).toString('base64');
    const ek = await this.#loadEk(ekKind);
    // None in NV: the bridge judges the EK by what the station registered (a certificate supplied
    // for the device, or the factory-trusted EK policy).
    const ekCertificate = await this.#tpm.readEkCertificate(ekKind);
    const body: EnrollRequest = {
      deviceId: this.#d.config.deviceId,
      ...(this.#mode === 'reattest' ? { mode: 'reattest' as const } : { token: this.#d.config.token }),
      ekKind,
      ...(ekCertificate ? { ekCertificate } : {}),
      ekPublic: ek.publicArea,
      akPublic: this.#d.ak.publicArea,
      keyPublic: this.#key!.publicArea,
      csr: Buffer.from(csr, 'base64'),
    };
    const requestId = newRequestId();
    const next: PendingEnrollment = {
      kind: p.kind,
      mode: this.#mode,
      clientId: this.#d.clientId,
      slot: p.slot,
      key: p.key,
      startedAt: p.startedAt,
      ekKind,
      csr,
      request: envelope(requestId, encode('enroll', requestId, this.#d.clock.now(), body)),
    };
    await this.#d.store.putPending(next);
    return next;
  }

  /**
   * The station's registered kind (bootstrap), certificate in NV or not: a TPM without one was
   * registered with a certificate supplied for it or under the factory-trusted EK policy, and createEk
   * then derives the EK from the TCG low-range template, as firmware TPMs do. Without a registered
   * kind: ECC before RSA among the certificates in NV (native/lib/ek-order.ts).
   */
  async #findEkKind(): Promise<EkKind> {
    const registered = this.#d.config.ekKind;
    if (registered) return registered;
    const ek = await preferredEk(this.#tpm);
    if (ek) return ek.kind;
    throw new EnrollmentError('AGENT_NO_EK_CERTIFICATE', 'the TPM has no EK certificate (neither ECC nor RSA), and the bootstrap names no EK kind');
  }

  async #loadEk(kind: EkKind): Promise<TpmKey> {
    this.#ek ??= await this.#tpm.createEk(kind);
    return this.#ek;
  }

  async #flushEk(): Promise<void> {
    const ek = this.#ek;
    this.#ek = undefined;
    if (ek) await this.#tpm.flush(ek).catch(() => undefined);
  }

  /** Credential activation and key certification; the proof is stored before it is sent. */
  async #answer(p: PendingEnrollment, c: EnrollChallenge): Promise<PendingEnrollment> {
    this.#backoff.reset();
    const ek = await this.#loadEk(p.ekKind!);
    const secret = await this.#tpm.activateCredential(this.#d.ak, ek, c.credentialBlob, c.encryptedSecret);
    await this.#flushEk();
    const attestation = await this.#tpm.certify(this.#key!, this.#d.ak, c.nonce);
    const requestId = newRequestId();
    const proof = encode('enrollProof', requestId, this.#d.clock.now(), {
      challengeId: c.challengeId,
      secret,
      certifyInfo: attestation.attest,
      certifySignature: attestation.signature,
    });
    const next: PendingEnrollment = { ...p, challenge: { challengeId: c.challengeId, expiresAt: c.expiresAt }, proof: envelope(requestId, proof) };
    await this.#d.store.putPending(next);
    this.#log('challenge answered', { challengeId: c.challengeId });
    return next;
  }

  async #react(p: PendingEnrollment, a: Answer): Promise<PendingEnrollment> {
    if (a.kind !== 'rejected') throw new EnrollmentError('AGENT_PROTOCOL_ERROR', `unexpected ${a.kind} answer`);
    const { code, retryAfterSec } = a.error;
    this.#log('enrollment rejected', { code, retryAfterSec });
    const reaction = reactionTo(code);
    if (reaction === 'restart' || reaction === 'retry') {
      this.#failures++;
      if (this.#failures >= (this.#d.maxAttempts ?? Infinity)) throw this.#gaveUp(code);
    }
    if (reaction === 'restart') {
      // The bridge lost or expired our challenge (e.g. it restarted): start over, same key and token.
      return this.#newRequest(p);
    }
    if (reaction === 'retry') {
      // Same envelope, same requestId: "retryable" means the same request may succeed later unchanged.
      const waitMs = retryAfterSec !== undefined ? retryAfterSec * 1000 : this.#backoff.next();
      this.#log('retrying after a retryable rejection', { code, waitMs });
      await this.#d.sleep(waitMs, this.#d.signal);
      return p;
    }
    throw new EnrollmentError('AGENT_ENROLLMENT_REJECTED', `${this.#mode === 'reattest' ? 're-attestation' : 'enrollment'} rejected: ${code} (${a.error.message})`, { rejection: code });
  }

  #gaveUp(code: RejectionCode): EnrollmentError {
    return new EnrollmentError('AGENT_ENROLLMENT_GAVE_UP', `enrollment still refused (${code}) after ${this.#failures} attempts`, { rejection: code });
  }

  async #send(topic: DeviceTopic, env: SentEnvelope, answers: readonly DeviceTopic[]): Promise<Answer> {
    const a: ExchangeAnswer = await exchange({
      link: this.#d.link,
      address: enrollAddressing(this.#d.topics, this.#clientId),
      request: topic,
      envelope: env,
      answers,
      timeoutMs: this.#d.responseTimeoutMs ?? 15_000,
      backoff: this.#backoff,
      sleep: this.#d.sleep,
      clock: this.#d.clock,
      ...(this.#d.signal ? { signal: this.#d.signal } : {}),
      onSend: () => this.#sent++,
      onRetry: (why, waitMs) => this.#log(why === 'timeout' ? 'no answer from the fleet; sending again' : 'connection lost; sending again once back', { waitMs }),
    });
    if (a.kind === 'rejected') return a;
    if (a.topic === 'enrollChallenge') return { kind: 'challenge', body: decode('enrollChallenge', a.payload).body };
    if (a.topic === 'enrollAccepted') return { kind: 'accepted', body: decode('enrollAccepted', a.payload).body };
    throw new EnrollmentError('AGENT_PROTOCOL_ERROR', `unexpected answer on ${a.topic}`);
  }

  async #finish(p: PendingEnrollment, body: EnrollAccepted, resumed: boolean): Promise<EnrollmentResult> {
    const { config, clock } = this.#d;
    const key = this.#key!;
    const identity = acceptIssued({
      body,
      key: p.key,
      keySpki: key.spki,
      trustBundle: this.#d.trustBundle ?? config.trustBundle,
      deviceId: config.deviceId,
      now: clock.now(),
    });
    await this.#d.onIssued?.(identity, p.slot);
    await this.#d.store.completeEnrollment(p.slot, identity, body.trustBundle, this.#d.retire);
    this.#log(this.#mode === 'reattest' ? 're-attested' : 'enrolled', { slot: p.slot, serial: body.serial, notAfter: new Date(body.notAfter).toISOString() });
    this.#key = undefined; // handed to the caller
    return {
      key,
      slot: p.slot,
      identity,
      trustBundle: body.trustBundle,
      tpmSignatures: this.#signatures(),
      messagesSent: this.#sent,
      resumed,
    };
  }
}
