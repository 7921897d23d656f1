import { randomBytes, X509Certificate } from 'node:crypto';
import type { Clock } from '../../common/clock.js';
import { CodedError } from '../../common/coded-error.js';
import { REJECTION_CODES, type RejectionCode } from '../../common/protocol/errors.js';
import { decode, encode } from '../../common/protocol/messages.js';
import type { Topics } from '../../common/protocol/topics.js';
import { request } from '../../common/transport/request.js';
import type { Transport } from '../../common/transport/transport.js';
import type { Tpm, TpmKey } from '../../native/lib/tpm.js';
import type { BootstrapConfig } from './config.js';
import { buildCsr } from './csr.js';
import type { AgentStore, PendingEnrollment, StoredBlobs } from './store.js';

/**
 * Enrollment, device side (protocol: docs/protocol.md). Resumable: the identity key, the CSR and every
 * message sent are stored in `pending` before they are sent, so a restarted agent resends the same
 * bytes under the same requestId and the bridge answers with what it answered before (never a second
 * certificate, never a second key). TPM signatures: CSR 1, certify 1.
 *
 * Rejections map to a closed set of reactions: retryable codes wait (retryAfterSec or backoff) and
 * resend; CHALLENGE_UNKNOWN/EXPIRED start over with a new requestId (same key, same token); anything
 * else stops with AGENT_ENROLLMENT_REJECTED.
 */
export type EnrollmentErrorCode = 'AGENT_ENROLLMENT_REJECTED' | 'AGENT_ENROLLMENT_INVALID_RESPONSE' | 'AGENT_ENROLLMENT_GAVE_UP';

export class EnrollmentError extends CodedError<EnrollmentErrorCode> {
  readonly rejection: RejectionCode | undefined;
  constructor(code: EnrollmentErrorCode, message: string, rejection?: RejectionCode) {
    super(code, message);
    this.rejection = rejection;
  }
}

export interface EnrollmentDeps {
  readonly tpm: Tpm;
  readonly srk: TpmKey;
  readonly ak: TpmKey;
  readonly store: AgentStore;
  readonly transport: Transport;
  readonly topics: Topics;
  readonly config: BootstrapConfig;
  readonly clock: Clock;
  /** Waits `ms` (injectable so tests need not sleep). */
  readonly sleep: (ms: number) => Promise<void>;
  readonly responseTimeoutMs?: number;
  readonly maxAttempts?: number;
  readonly onTpmSignature?: () => void;
  readonly log?: (msg: string, fields?: Record<string, unknown>) => void;
}

export interface EnrollmentResult {
  readonly key: TpmKey;
  readonly certificate: string;
  readonly chain: readonly string[];
  readonly serial: string;
  readonly notAfter: number;
}

const b64 = (b: Buffer) => b.toString('base64');
const fromB64 = (s: string) => Buffer.from(s, 'base64');
export const toStored = (b: { private: Buffer; public: Buffer }): StoredBlobs => ({ private: b64(b.private), public: b64(b.public) });
export const fromStored = (b: StoredBlobs) => ({ private: fromB64(b.private), public: fromB64(b.public) });
const newRequestId = () => randomBytes(12).toString('base64url');

export async function enroll(d: EnrollmentDeps): Promise<EnrollmentResult> {
  const loaded: TpmKey[] = [];
  try {
    return await enrollLoaded(d, loaded);
  } catch (e) {
    // The key stays recoverable from `pending`; don't leave it occupying a TPM slot (swtpm has no
    // resource manager to flush it for us).
    for (const k of loaded) await d.tpm.flush(k).catch(() => undefined);
    throw e;
  }
}

async function enrollLoaded(d: EnrollmentDeps, loaded: TpmKey[]): Promise<EnrollmentResult> {
  const { tpm, srk, ak, store, transport, topics, config } = d;
  const id = config.deviceId;
  const log = d.log ?? (() => undefined);
  let pending = await store.getPending();
  let key: TpmKey;
  if (pending) {
    key = await tpm.loadKey(srk, fromStored(pending.key));
    loaded.push(key);
    log('resuming enrollment', { requestId: pending.enrollRequestId, proofSent: Boolean(pending.proof) });
  } else {
    const created = await tpm.createIdentityKey(srk);
    key = created.key;
    loaded.push(key);
    const csr = await buildCsr(id, key.spki, async (digest) => {
      d.onTpmSignature?.();
      return (await tpm.sign(key, digest)).der;
    });
    const ekKind = (await tpm.readEkCertificate('ecc')) ? 'ecc' : 'rsa';
    pending = { slot: 'A', key: toStored(created.blobs), csr: b64(csr), ekKind, enrollRequestId: newRequestId() };
    await store.putPending(pending);
  }

  const ekCertificate = await tpm.readEkCertificate(pending.ekKind);
  if (!ekCertificate) throw new EnrollmentError('AGENT_ENROLLMENT_INVALID_RESPONSE', `the TPM has no ${pending.ekKind} EK certificate`);
  const timeoutMs = d.responseTimeoutMs ?? 15_000;
  const maxAttempts = d.maxAttempts ?? 20;
  let backoffMs = 1000;

  for (let attempt = 1; ; attempt++) {
    if (attempt > maxAttempts) throw new EnrollmentError('AGENT_ENROLLMENT_GAVE_UP', `no enrollment after ${maxAttempts} attempts`);
    const cur: PendingEnrollment = pending;
    let answer: { topic: string; payload: Buffer };
    if (cur.proof) {
      const requestId = cur.proof.requestId;
      answer = await request(transport, {
        requestTopic: topics.device(id, 'enrollProof'),
        payload: fromB64(cur.proof.payload),
        responseTopics: [topics.device(id, 'enrollAccepted'), topics.device(id, 'enrollRejected')],
        match: (m) => peekRequestId(m.payload) === requestId,
        timeoutMs,
        retries: 2,
      });
    } else {
      const ek = await tpm.createEk(cur.ekKind);
      const payload = encode('enroll', cur.enrollRequestId, d.clock.now(), {
        deviceId: id,
        token: config.token,
        ekKind: cur.ekKind,
        ekCertificate,
        ekPublic: ek.publicArea,
        akPublic: ak.publicArea,
        keyPublic: key.publicArea,
        csr: fromB64(cur.csr),
      });
      try {
        const requestId = cur.enrollRequestId;
        answer = await request(transport, {
          requestTopic: topics.device(id, 'enroll'),
          payload,
          responseTopics: [topics.device(id, 'enrollChallenge'), topics.device(id, 'enrollRejected')],
          match: (m) => peekRequestId(m.payload) === requestId,
          timeoutMs,
          retries: 2,
        });
        if (answer.topic === topics.device(id, 'enrollChallenge')) {
          const c = decode('enrollChallenge', answer.payload).body;
          const secret = await tpm.activateCredential(ak, ek, c.credentialBlob, c.encryptedSecret);
          d.onTpmSignature?.();
          const att = await tpm.certify(key, ak, c.nonce);
          const proofRequestId = newRequestId();
          const proof = encode('enrollProof', proofRequestId, d.clock.now(), {
            challengeId: c.challengeId,
            secret,
            certifyInfo: att.attest,
            certifySignature: att.signature,
          });
          pending = { ...cur, proof: { requestId: proofRequestId, payload: b64(proof) } };
          await store.putPending(pending);
          continue;
        }
      } finally {
        await tpm.flush(ek);
      }
    }

    if (answer.topic === topics.device(id, 'enrollAccepted')) {
      const body = decode('enrollAccepted', answer.payload).body;
      checkIssued(body.certificate, body.chain, body.trustBundle, key, id);
      await store.completeEnrollment(cur.slot, {
        key: cur.key,
        certificate: body.certificate,
        chain: body.chain,
        serial: body.serial,
        notAfter: body.notAfter,
        issuedAt: d.clock.now(),
      }, body.trustBundle);
      log('enrolled', { serial: body.serial, notAfter: new Date(body.notAfter).toISOString() });
      return { key, certificate: body.certificate, chain: body.chain, serial: body.serial, notAfter: body.notAfter };
    }

    const rejection = decode('enrollRejected', answer.payload).error;
    log('enrollment rejected', { code: rejection.code, retryable: rejection.retryable });
    if (rejection.code === 'CHALLENGE_UNKNOWN' || rejection.code === 'CHALLENGE_EXPIRED') {
      // The bridge lost or expired our challenge (e.g. it restarted): start over, same key and token.
      pending = { slot: cur.slot, key: cur.key, csr: cur.csr, ekKind: cur.ekKind, enrollRequestId: newRequestId() };
      await store.putPending(pending);
      continue;
    }
    if (REJECTION_CODES[rejection.code].retryable) {
      const waitMs = rejection.retryAfterSec !== undefined ? rejection.retryAfterSec * 1000 : backoffMs * (0.5 + Math.random());
      backoffMs = Math.min(backoffMs * 2, 60_000);
      await d.sleep(waitMs);
      // A retry is a new request (the rejection was the bridge's answer to the old requestId) and
      // starts from enroll, so the challenge is fresh too. Same key, same token.
      pending = { slot: cur.slot, key: cur.key, csr: cur.csr, ekKind: cur.ekKind, enrollRequestId: newRequestId() };
      await store.putPending(pending);
      continue;
    }
    throw new EnrollmentError('AGENT_ENROLLMENT_REJECTED', `enrollment rejected: ${rejection.code} (${rejection.message})`, rejection.code);
  }
}

/** The certificate must be for our TPM key, name this device, and chain to the trust bundle. */
function checkIssued(certificate: string, chain: readonly string[], trustBundle: readonly string[], key: TpmKey, deviceId: string): void {
  const leaf = new X509Certificate(certificate);
  if (!leaf.publicKey.export({ type: 'spki', format: 'der' }).equals(key.spki)) {
    throw new EnrollmentError('AGENT_ENROLLMENT_INVALID_RESPONSE', 'issued certificate is not for our TPM key');
  }
  if (!leaf.subject.split('\n').includes(`CN=${deviceId}`)) {
    throw new EnrollmentError('AGENT_ENROLLMENT_INVALID_RESPONSE', 'issued certificate does not name this device');
  }
  const pool = [...chain, ...trustBundle].map((p) => new X509Certificate(p));
  const roots = trustBundle.map((p) => p.replace(/\s+/g, ''));
  let cur = leaf;
  for (let depth = 0; depth < 5; depth++) {
    const issuer = pool.find((c) => c.ca && cur.checkIssued(c) && cur.verify(c.publicKey));
    if (!issuer) break;
    if (roots.includes(issuer.toString().replace(/\s+/g, ''))) return;
    cur = issuer;
  }
  throw new EnrollmentError('AGENT_ENROLLMENT_INVALID_RESPONSE', 'issued certificate does not chain to the trust bundle');
}

function peekRequestId(payload: Buffer): string | undefined {
  try {
    const v = (JSON.parse(payload.toString('utf8')) as { requestId?: unknown }).requestId;
    return typeof v === 'string' ? v : undefined;
  } catch {
    return undefined;
  }
}
