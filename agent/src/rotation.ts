import { randomBytes } from 'node:crypto';
import type { Clock } from '../../common/clock.js';
import { CodedError } from '../../common/coded-error.js';
import type { RejectionCode } from '../../common/protocol/errors.js';
import { decode, encode, type Rejection } from '../../common/protocol/messages.js';
import type { Topics } from '../../common/protocol/topics.js';
import type { Tpm, TpmKey } from '../../native/lib/tpm.js';
import { throwIfAborted, type Backoff, type Sleep } from './backoff.js';
import { buildTpmCsr } from './csr.js';
import { fromStored, toStored } from './enrollment.js';
import { deviceAddressing, exchange, type Link } from './exchange.js';
import { acceptIssued } from './issued-certificate.js';
import { reactionTo, type Reaction } from './policy.js';
import type { ActiveIdentity, AgentStore, IdentitySlot, PendingRotation, SentEnvelope, StoredAk } from './store.js';

/**
 * Rotation, device side, up to the new certificate (protocol: docs/protocol.md "Rotation"):
 *   rotate/begin {currentSerial} → rotate/challenge {rotationId, nonce}
 *   → TPM2_Certify(new key, AK, nonce) + CSR signed by the new key inside the TPM
 *   → rotate/request → rotate/accepted {certificate} | rotate/rejected.
 * The new key is created in the slot that is not active and stored in `pending` before anything is
 * sent, the CSR once signed, the request envelope before it is sent (resent byte for byte, same
 * requestId, after a restart; any rejection spends the nonce, so the next try begins again). On
 * acceptance the certificate is checked (our key, our id, chains to the trust bundle we hold) and
 * stored in the new slot with the rotation in phase `trial`; the agent then tries a connection with
 * it, commits (active = new) or rolls back, and finally confirms (`confirm`).
 *
 * TPM signatures: CSR 1, certify 1 (the new mTLS handshake is the third). Outages never fail a
 * rotation: exchange() waits them out. Rejections come back as a `refused` outcome with the
 * reaction the closed policy maps the code to.
 */
export type RotationErrorCode = 'AGENT_ROTATION_PROTOCOL';

export interface RotationDeps {
  readonly tpm: Tpm;
  readonly srk: TpmKey;
  readonly ak: StoredAk;
  readonly store: AgentStore;
  readonly link: Link;
  readonly topics: Topics;
  readonly deviceId: string;
  readonly trustBundle: readonly string[];
  readonly clock: Clock;
  readonly sleep: Sleep;
  readonly backoff: Backoff;
  readonly responseTimeoutMs: number;
  readonly signal?: AbortSignal;
  readonly log: (msg: string, fields?: Record<string, unknown>) => void;
}

export type RotationOutcome =
  | { readonly kind: 'issued'; readonly pending: PendingRotation; readonly identity: IdentitySlot }
  | { readonly kind: 'refused'; readonly code: RejectionCode; readonly reaction: Reaction; readonly retryAfterSec?: number };

const newRequestId = () => randomBytes(12).toString('base64url');
const envelope = (requestId: string, payload: Buffer): SentEnvelope => ({ requestId, payload: payload.toString('base64') });

/** Runs (or resumes, from a `requesting` pending record) a rotation up to the stored new certificate. */
export async function requestRotation(d: RotationDeps, current: ActiveIdentity, resume?: PendingRotation): Promise<RotationOutcome> {
  let key: TpmKey | undefined;
  try {
    let p = resume;
    if (p && p.phase !== 'requesting') throw new CodedError<RotationErrorCode>('AGENT_ROTATION_PROTOCOL', `cannot request a rotation in phase ${p.phase}`);
    if (p) {
      key = await d.tpm.loadKey(d.srk, fromStored(p.key));
      d.log('resuming rotation', { slot: p.slot, requestSent: p.request !== undefined });
    } else {
      const slot = current.name === 'A' ? 'B' : 'A';
      const created = await d.tpm.createIdentityKey(d.srk);
      key = created.key;
      p = { kind: 'rotate', phase: 'requesting', slot, key: toStored(created.blobs), startedAt: d.clock.now(), fromSlot: current.name, fromSerial: current.slot.serial };
      await d.store.putPending(p);
      d.log('rotation key created', { slot });
    }
    if (!p.csr) {
      p = { ...p, csr: (await buildTpmCsr(d.tpm, key, d.deviceId)).toString('base64') };
      await d.store.putPending(p);
    }
    for (;;) {
      throwIfAborted(d.signal);
      if (!p.request) {
        const begun = await begin(d, p);
        if (begun.kind === 'refused') return begun;
        p = await certifyAndStore(d, p, key, begun.rotationId, begun.nonce);
      }
      const a = await exchange({
        ...exchangeCommon(d),
        request: 'rotateRequest',
        envelope: p.request!,
        answers: ['rotateAccepted', 'rotateRejected'],
      });
      if (a.kind === 'rejected') {
        const refused = refusal(a.error);
        d.log('rotation request rejected', { code: refused.code });
        // Any answer spends the bridge's nonce (a repeat of this requestId gets this same rejection):
        // the next try begins again, with the same key and CSR.
        const { request: _dropped, ...rest } = p;
        p = rest;
        await d.store.putPending(p);
        if (refused.reaction !== 'restart') return refused;
        continue;
      }
      const body = decode('rotateAccepted', a.payload).body;
      const identity = acceptIssued({ body, key: p.key, keySpki: key.spki, trustBundle: d.trustBundle, deviceId: d.deviceId, now: d.clock.now() });
      const next = await d.store.rotationIssued(p, identity);
      d.log('rotation certificate issued', { slot: p.slot, serial: body.serial });
      return { kind: 'issued', pending: next, identity };
    }
  } finally {
    // Loaded again for the trial handshake only (mqtt-link.ts); keep the TPM's slots free meanwhile.
    if (key) await d.tpm.flush(key).catch(() => undefined);
  }
}

async function begin(d: RotationDeps, p: PendingRotation): Promise<{ kind: 'nonce'; rotationId: string; nonce: Buffer } | Extract<RotationOutcome, { kind: 'refused' }>> {
  for (;;) {
    const requestId = newRequestId();
    const a = await exchange({
      ...exchangeCommon(d),
      request: 'rotateBegin',
      envelope: envelope(requestId, encode('rotateBegin', requestId, d.clock.now(), { deviceId: d.deviceId, currentSerial: p.fromSerial })),
      answers: ['rotateChallenge', 'rotateRejected'],
    });
    if (a.kind === 'answer') {
      const body = decode('rotateChallenge', a.payload).body;
      return { kind: 'nonce', rotationId: body.rotationId, nonce: body.nonce };
    }
    const refused = refusal(a.error);
    d.log('rotation refused', { code: refused.code });
    if (refused.reaction !== 'restart') return refused;
  }
}

async function certifyAndStore(d: RotationDeps, p: PendingRotation, key: TpmKey, rotationId: string, nonce: Buffer): Promise<PendingRotation> {
  const ak = await d.tpm.loadKey(d.srk, fromStored(d.ak.blobs));
  let attestation;
  try {
    attestation = await d.tpm.certify(key, ak, nonce);
  } finally {
    await d.tpm.flush(ak).catch(() => undefined);
  }
  const requestId = newRequestId();
  const payload = encode('rotateRequest', requestId, d.clock.now(), {
    rotationId,
    akPublic: ak.publicArea,
    keyPublic: key.publicArea,
    certifyInfo: attestation.attest,
    certifySignature: attestation.signature,
    csr: Buffer.from(p.csr!, 'base64'),
  });
  const next: PendingRotation = { ...p, request: envelope(requestId, payload) };
  await d.store.putPending(next);
  return next;
}

export type ConfirmOutcome = { readonly kind: 'confirmed'; readonly superseded: readonly string[] } | Extract<RotationOutcome, { kind: 'refused' }>;

/**
 * Tells the bridge the device works with `serial` so it retires its other certificates (the old one
 * after a rotation, the refused one after a rollback); idempotent on the bridge.
 */
export async function confirmRotation(d: RotationDeps, c: { readonly serial: string; readonly previousSerial: string }): Promise<ConfirmOutcome> {
  const requestId = newRequestId();
  const a = await exchange({
    ...exchangeCommon(d),
    request: 'rotateConfirm',
    envelope: envelope(requestId, encode('rotateConfirm', requestId, d.clock.now(), { serial: c.serial, previousSerial: c.previousSerial })),
    answers: ['rotateConfirmed', 'rotateRejected'],
  });
  if (a.kind === 'rejected') return refusal(a.error);
  return { kind: 'confirmed', superseded: decode('rotateConfirmed', a.payload).body.superseded };
}

function refusal(error: Rejection['error']): Extract<RotationOutcome, { kind: 'refused' }> {
  return {
    kind: 'refused',
    code: error.code,
    reaction: reactionTo(error.code),
    ...(error.retryAfterSec === undefined ? {} : { retryAfterSec: error.retryAfterSec }),
  };
}

function exchangeCommon(d: RotationDeps) {
  return {
    link: d.link,
    address: deviceAddressing(d.topics, d.deviceId),
    timeoutMs: d.responseTimeoutMs,
    backoff: d.backoff,
    sleep: d.sleep,
    clock: d.clock,
    ...(d.signal ? { signal: d.signal } : {}),
    onRetry: (why: 'timeout' | 'disconnected', waitMs: number) => d.log(why === 'timeout' ? 'no answer to the rotation; sending again' : 'connection lost during rotation; sending again once back', { waitMs }),
  };
}
