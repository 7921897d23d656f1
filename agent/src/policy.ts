import { createHash } from 'node:crypto';
import { CodedError } from '../../common/coded-error.js';
import type { RejectionCode } from '../../common/protocol/errors.js';
import type { TransportErrorCode } from '../../common/transport/transport.js';

/**
 * The agent's timing and reaction policies, as pure functions: no I/O, no clock. Every time is an
 * argument in milliseconds since the epoch, so the supervisor's decisions are unit-tested with plain
 * numbers (agent/src/policy.test.ts) and the supervisor only does I/O at the edges.
 *
 * - Rotation: renew at `renewAtFraction` of the certificate's lifetime, shifted by up to
 *   ±`jitterFraction` of the lifetime. The shift is derived from sha256(seed, serial): a restart never
 *   re-rolls it, and a fleet issued in one wave still renews spread out.
 * - Clock floor: the newest trusted timestamp seen (certificate notBefore, later CRL thisUpdate). A
 *   system clock behind it is reported and never used to judge validity.
 * - Offline budget: how long a device may be unreachable after its renewal point and still rotate over
 *   mTLS instead of re-attesting.
 * - Reactions: a closed map from every rejection and transport code to what the agent does next.
 */

/** Errors: an inconsistent offline budget (the agent refuses to start). */
export type PolicyErrorCode = 'AGENT_CONFIG_INVALID';

export interface RotationPolicy {
  /** Fraction of the lifetime at which renewal starts, before jitter; in (0, 1). */
  readonly renewAtFraction: number;
  /** Half-width of the jitter window, as a fraction of the lifetime; >= 0. */
  readonly jitterFraction: number;
}

export const DEFAULT_ROTATION_POLICY: RotationPolicy = { renewAtFraction: 2 / 3, jitterFraction: 0.1 };

/** The validity window of a certificate, ms since the epoch. */
export interface CertificateWindow {
  readonly serial: string;
  readonly notBefore: number;
  readonly notAfter: number;
}

/**
 * A deterministic draw u in [-1, 1) from sha256(seed ‖ 0x00 ‖ serial): 48 bits of the digest, so
 * every u is distinct at that resolution. The NUL separator keeps ("ab","c") and ("a","bc") apart.
 */
export function jitterUnit(seed: string, serial: string): number {
  const digest = createHash('sha256').update(seed).update('\0').update(serial).digest();
  return (digest.readUIntBE(0, 6) / 2 ** 48) * 2 - 1;
}

/** notBefore + lifetime * (renewAt + jitter * u), floored to whole ms. */
export function rotationTime(cert: CertificateWindow, policy: RotationPolicy, seed: string): number {
  const lifetime = cert.notAfter - cert.notBefore;
  const fraction = policy.renewAtFraction + policy.jitterFraction * jitterUnit(seed, cert.serial);
  return cert.notBefore + Math.floor(lifetime * fraction);
}

export function shouldRotate(now: number, cert: CertificateWindow, policy: RotationPolicy, seed: string): boolean {
  return now >= rotationTime(cert, policy, seed);
}

// ---- Clock floor -------------------------------------------------------------------------------

/** The new floor after seeing a trusted timestamp: it only ever moves forward. */
export function advanceFloor(floor: number | undefined, trusted: number): number {
  return floor === undefined ? trusted : Math.max(floor, trusted);
}

export interface JudgedNow {
  /** The time to judge validity with: never earlier than the floor. */
  readonly now: number;
  /** How far the system clock is behind the floor (0 when it is not); report as skew. */
  readonly behindMs: number;
}

export function judgeNow(now: number, floor: number | undefined): JudgedNow {
  if (floor === undefined || now >= floor) return { now, behindMs: 0 };
  return { now: floor, behindMs: floor - now };
}

// ---- Offline budget ----------------------------------------------------------------------------

export interface OfflineBudget extends RotationPolicy {
  /** Certificate lifetime the fleet issues, seconds. */
  readonly lifetimeSec: number;
  /**
   * Margin before notAfter at which the agent stops rotating over mTLS and re-attests instead (a
   * connection with an about-to-expire certificate would fail anyway).
   */
  readonly graceSec: number;
}

export const DEFAULT_OFFLINE_BUDGET: OfflineBudget = {
  lifetimeSec: 30 * 24 * 3600,
  ...DEFAULT_ROTATION_POLICY,
  graceSec: 3600,
};

/**
 * How long a device can be offline after its (latest possible) renewal point and still renew over
 * mTLS without re-attesting: lifetime * (1 - renewAt - jitter) - grace, in seconds.
 */
export function offlineToleranceSec(b: OfflineBudget): number {
  return b.lifetimeSec * (1 - b.renewAtFraction - b.jitterFraction) - b.graceSec;
}

/** Refuses an inconsistent budget with AGENT_CONFIG_INVALID naming the constraint and the numbers. */
export function checkBudget(b: OfflineBudget): void {
  const fail = (message: string): never => {
    throw new CodedError<PolicyErrorCode>('AGENT_CONFIG_INVALID', `offline budget: ${message}`, { details: { ...b } });
  };
  for (const k of ['lifetimeSec', 'renewAtFraction', 'jitterFraction', 'graceSec'] as const) {
    if (typeof b[k] !== 'number' || !Number.isFinite(b[k])) fail(`${k} must be a finite number, got ${String(b[k])}`);
  }
  const { lifetimeSec, renewAtFraction: renewAt, jitterFraction: jitter, graceSec } = b;
  if (lifetimeSec < 60) fail(`lifetimeSec must be at least 60, got ${lifetimeSec}`);
  if (jitter < 0) fail(`jitterFraction must be >= 0, got ${jitter}`);
  if (renewAt - jitter <= 0) {
    fail(`the earliest renewal point renewAtFraction - jitterFraction = ${renewAt} - ${jitter} = ${renewAt - jitter} must be > 0`);
  }
  if (renewAt + jitter >= 1) {
    fail(`the latest renewal point renewAtFraction + jitterFraction = ${renewAt} + ${jitter} = ${renewAt + jitter} must be < 1`);
  }
  if (graceSec < 0) fail(`graceSec must be >= 0, got ${graceSec}`);
  const tolerance = offlineToleranceSec(b);
  if (tolerance <= 0) {
    const window = lifetimeSec * (1 - renewAt - jitter);
    fail(
      `graceSec ${graceSec} does not fit in the ${window} s between the latest renewal point and expiry ` +
        `(lifetimeSec ${lifetimeSec} * (1 - ${renewAt} - ${jitter})); offline tolerance would be ${tolerance} s, must be > 0`,
    );
  }
}

// ---- Identity phase ----------------------------------------------------------------------------

/**
 * - valid: before the rotation time; nothing to do.
 * - renew: rotate over mTLS (between the rotation time and notAfter - grace).
 * - expiring: within grace of notAfter; re-attest (an mTLS rotation would race the expiry).
 * - expired: at or after notAfter; re-attest.
 */
export type IdentityPhase = 'valid' | 'renew' | 'expiring' | 'expired';

export type PhasePolicy = RotationPolicy & { readonly graceSec: number };

/** `nowJudged` must come from `judgeNow` (never the raw system clock). */
export function identityPhase(nowJudged: number, cert: CertificateWindow, policy: PhasePolicy, seed: string): IdentityPhase {
  if (nowJudged >= cert.notAfter) return 'expired';
  if (nowJudged >= cert.notAfter - policy.graceSec * 1000) return 'expiring';
  if (nowJudged >= rotationTime(cert, policy, seed)) return 'renew';
  return 'valid';
}

/**
 * How long the supervisor may sleep before the next timing decision: until the next phase boundary
 * still ahead (rotation time, notAfter - grace, notAfter), at most `maxTickMs`, never negative.
 * Without a certificate, just `maxTickMs`.
 */
export function nextWakeMs(
  nowJudged: number,
  cert: CertificateWindow | undefined,
  policy: PhasePolicy,
  seed: string,
  maxTickMs: number,
): number {
  let wake = Math.max(0, maxTickMs);
  if (!cert) return wake;
  for (const boundary of [rotationTime(cert, policy, seed), cert.notAfter - policy.graceSec * 1000, cert.notAfter]) {
    if (boundary > nowJudged) wake = Math.min(wake, boundary - nowJudged);
  }
  return wake;
}

// ---- Reactions to failures ---------------------------------------------------------------------

/**
 * - retry: the same request can succeed later (backoff with full jitter, honouring retryAfterSec);
 * - restart: start the exchange again from its first message (the challenge is gone);
 * - reattest: the current identity is no longer usable; re-attest through the enrollment listener;
 * - stop: no retry can succeed; stay up, report the code in status, wait for an operator.
 */
export type Reaction = 'retry' | 'restart' | 'reattest' | 'stop';

export type ReactionCode = RejectionCode | TransportErrorCode;

/**
 * Every rejection code, exhaustively (a new code in errors.ts fails to compile until it is placed
 * here). Codes REJECTION_CODES marks retryable retry (policy.test.ts checks it); the rest is decided one by one.
 */
const REJECTION_REACTIONS: Record<RejectionCode, Reaction> = {
  RATE_LIMITED: 'retry',
  UNAVAILABLE: 'retry',
  INTERNAL: 'retry',
  CHALLENGE_UNKNOWN: 'restart',
  CHALLENGE_EXPIRED: 'restart',
  IDENTITY_EXPIRED: 'reattest',
  IDENTITY_UNKNOWN: 'reattest',
  BAD_REQUEST: 'stop',
  TOKEN_UNKNOWN: 'stop',
  TOKEN_EXPIRED: 'stop',
  TOKEN_USED: 'stop',
  TOKEN_MISMATCH: 'stop',
  EK_UNTRUSTED: 'stop',
  EK_CERT_EXPIRED: 'stop',
  EK_MISMATCH: 'stop',
  AK_INVALID: 'stop',
  ACTIVATION_FAILED: 'stop',
  CERTIFY_INVALID: 'stop',
  CSR_INVALID: 'stop',
  CSR_KEY_MISMATCH: 'stop',
  POLICY_DENIED: 'stop',
  DEVICE_UNKNOWN: 'stop',
  NOT_ENROLLED: 'stop',
  DEVICE_REVOKED: 'stop',
  AK_MISMATCH: 'stop',
};

/**
 * Every transport code. No network condition ends progress: connection failures, timeouts, refusals
 * by the broker (a restarting broker, an ACL reload) and a closed transport (being replaced, e.g. by
 * the reconnect after a rotation) retry. Only local programming errors — a bad topic, argument or an
 * oversize payload, which no retry changes — stop.
 */
const TRANSPORT_REACTIONS: Record<TransportErrorCode, Reaction> = {
  TRANSPORT_NOT_CONNECTED: 'retry',
  TRANSPORT_TIMEOUT: 'retry',
  TRANSPORT_UNREACHABLE: 'retry',
  TRANSPORT_TLS_FAILED: 'retry',
  TRANSPORT_CONNECT_REFUSED: 'retry',
  TRANSPORT_CONNECTION_LOST: 'retry',
  TRANSPORT_SUBSCRIBE_REFUSED: 'retry',
  TRANSPORT_PUBLISH_REFUSED: 'retry',
  TRANSPORT_HANDLER_FAILED: 'retry',
  TRANSPORT_CLOSED: 'retry',
  TRANSPORT_INVALID_TOPIC: 'stop',
  TRANSPORT_INVALID_ARGUMENT: 'stop',
  TRANSPORT_PAYLOAD_TOO_LARGE: 'stop',
};

const REACTIONS: Readonly<Record<ReactionCode, Reaction>> = { ...REJECTION_REACTIONS, ...TRANSPORT_REACTIONS };

export function isReactionCode(code: string): code is ReactionCode {
  return Object.hasOwn(REACTIONS, code);
}

export function reactionTo(code: ReactionCode): Reaction {
  return REACTIONS[code];
}

