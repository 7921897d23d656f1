import { describe, expect, it } from 'vitest';
import { REJECTION_CODE_LIST, REJECTION_CODES } from '../../common/protocol/errors.js';
import {
  advanceFloor,
  checkBudget,
  DEFAULT_OFFLINE_BUDGET,
  DEFAULT_ROTATION_POLICY,
  identityPhase,
  isReactionCode,
  jitterUnit,
  judgeNow,
  nextWakeMs,
  offlineToleranceSec,
  reactionTo,
  rotationTime,
  shouldRotate,
  type OfflineBudget,
  type ReactionCode,
} from './policy.js';

const DAY = 86_400_000;
const T0 = Date.UTC(2026, 0, 1);
/** A 30-day certificate. */
const cert = { serial: '0a1b2c3d', notBefore: T0, notAfter: T0 + 30 * DAY };
const seed = 'device-0001';

describe('rotationTime / shouldRotate', () => {
  it('without jitter renews at exactly renewAtFraction of the lifetime', () => {
    expect(rotationTime(cert, { renewAtFraction: 2 / 3, jitterFraction: 0 }, seed)).toBe(T0 + 20 * DAY);
    expect(rotationTime(cert, { renewAtFraction: 0.5, jitterFraction: 0 }, seed)).toBe(T0 + 15 * DAY);
  });

  it('is the same for the same seed and serial, every time (a restart does not re-roll)', () => {
    const t = rotationTime(cert, DEFAULT_ROTATION_POLICY, seed);
    for (let i = 0; i < 5; i++) expect(rotationTime({ ...cert }, DEFAULT_ROTATION_POLICY, seed)).toBe(t);
    expect(jitterUnit(seed, cert.serial)).toBe(jitterUnit(seed, cert.serial));
  });

  it('differs between devices (seed) and between certificates of one device (serial)', () => {
    const t = rotationTime(cert, DEFAULT_ROTATION_POLICY, seed);
    expect(rotationTime(cert, DEFAULT_ROTATION_POLICY, 'device-0002')).not.toBe(t);
    expect(rotationTime({ ...cert, serial: '0a1b2c3e' }, DEFAULT_ROTATION_POLICY, seed)).not.toBe(t);
    // The separator keeps (seed, serial) pairs with the same concatenation apart.
    expect(jitterUnit('ab', 'c')).not.toBe(jitterUnit('a', 'bc'));
  });

  it('10,000 serials spread uniformly over renewAt ± jitter of the lifetime', () => {
    const lifetime = cert.notAfter - cert.notBefore;
    const lo = T0 + lifetime * (2 / 3 - 0.1);
    const hi = T0 + lifetime * (2 / 3 + 0.1);
    const buckets = new Array<number>(10).fill(0);
    const times = new Set<number>();
    for (let i = 0; i < 10_000; i++) {
      const serial = (0x1000_0000 + i * 7919).toString(16);
      const t = rotationTime({ ...cert, serial }, DEFAULT_ROTATION_POLICY, seed);
      expect(t).toBeGreaterThanOrEqual(Math.floor(lo));
      expect(t).toBeLessThan(hi);
      buckets[Math.min(9, Math.floor(((t - lo) / (hi - lo)) * 10))]!++;
      times.add(t);
      // Same serial, same time.
      expect(rotationTime({ ...cert, serial }, DEFAULT_ROTATION_POLICY, seed)).toBe(t);
    }
    // Uniform: each tenth of the window holds ~1000 (a loose bound, deterministic input).
    for (const b of buckets) {
      expect(b).toBeGreaterThan(850);
      expect(b).toBeLessThan(1150);
    }
    expect(times.size).toBeGreaterThan(9_990); // no spike: practically every device renews at its own ms
  });

  it.each([
    [-1, false],
    [0, true],
    [1, true],
  ])('shouldRotate at rotationTime%+d ms -> %s', (offset, expected) => {
    const t = rotationTime(cert, DEFAULT_ROTATION_POLICY, seed);
    expect(shouldRotate(t + offset, cert, DEFAULT_ROTATION_POLICY, seed)).toBe(expected);
  });

  it('shouldRotate is false at issuance and true at expiry', () => {
    expect(shouldRotate(cert.notBefore, cert, DEFAULT_ROTATION_POLICY, seed)).toBe(false);
    expect(shouldRotate(cert.notAfter, cert, DEFAULT_ROTATION_POLICY, seed)).toBe(true);
  });
});

describe('clock floor', () => {
  it.each([
    [undefined, 100, 100],
    [100, 50, 100],
    [100, 150, 150],
    [100, 100, 100],
  ])('advanceFloor(%s, %d) = %d (only forward)', (floor, trusted, expected) => {
    expect(advanceFloor(floor, trusted)).toBe(expected);
  });

  it.each([
    // now, floor, judged now, behindMs
    [1000, undefined, 1000, 0],
    [1000, 500, 1000, 0],
    [1000, 1000, 1000, 0],
    [1000, 4000, 4000, 3000],
    [0, T0, T0, T0], // a device booting at the epoch (no RTC) judges with the floor
  ])('judgeNow(%d, %s) -> now %d, behind %d', (now, floor, judged, behind) => {
    expect(judgeNow(now, floor)).toEqual({ now: judged, behindMs: behind });
  });

  it('a clock behind the floor cannot make an expired certificate look valid', () => {
    const floor = cert.notAfter + 1; // saw a trusted timestamp after expiry
    const { now, behindMs } = judgeNow(cert.notBefore + DAY, floor);
    expect(behindMs).toBeGreaterThan(0);
    expect(identityPhase(now, cert, DEFAULT_OFFLINE_BUDGET, seed)).toBe('expired');
  });
});

describe('offline budget', () => {
  it('the default budget (30 d, 2/3 ± 0.1, 1 h grace) tolerates 7 days minus the grace offline', () => {
    expect(DEFAULT_OFFLINE_BUDGET).toEqual({ lifetimeSec: 2_592_000, renewAtFraction: 2 / 3, jitterFraction: 0.1, graceSec: 3600 });
    expect(() => checkBudget(DEFAULT_OFFLINE_BUDGET)).not.toThrow();
    expect(offlineToleranceSec(DEFAULT_OFFLINE_BUDGET)).toBeCloseTo(7 * 86_400 - 3600, 3);
  });

  it.each<[string, Partial<OfflineBudget>, string]>([
    ['lifetime below 60 s', { lifetimeSec: 59 }, 'lifetimeSec must be at least 60, got 59'],
    ['negative jitter', { jitterFraction: -0.01 }, 'jitterFraction must be >= 0, got -0.01'],
    ['earliest renewal at or before issuance', { renewAtFraction: 0.1, jitterFraction: 0.1 }, 'renewAtFraction - jitterFraction = 0.1 - 0.1 = 0 must be > 0'],
    ['renewal at zero', { renewAtFraction: 0, jitterFraction: 0 }, 'must be > 0'],
    ['latest renewal at or after expiry', { renewAtFraction: 0.9, jitterFraction: 0.1 }, 'renewAtFraction + jitterFraction = 0.9 + 0.1 = 1 must be < 1'],
    ['negative grace', { graceSec: -1 }, 'graceSec must be >= 0, got -1'],
    ['grace larger than the window after the latest renewal', { lifetimeSec: 3600, renewAtFraction: 0.5, jitterFraction: 0.1, graceSec: 1440 }, 'graceSec 1440 does not fit in the 1440 s'],
    ['grace in a 30-day budget that renews late', { renewAtFraction: 0.9, jitterFraction: 0.05, graceSec: 200_000 }, 'offline tolerance would be -70400'],
    ['non-finite lifetime', { lifetimeSec: Number.POSITIVE_INFINITY }, 'lifetimeSec must be a finite number, got Infinity'],
    ['NaN fraction', { renewAtFraction: Number.NaN }, 'renewAtFraction must be a finite number, got NaN'],
  ])('refuses %s with AGENT_CONFIG_INVALID and the numbers', (_name, patch, text) => {
    const b = { ...DEFAULT_OFFLINE_BUDGET, ...patch };
    let err: unknown;
    try {
      checkBudget(b);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'AGENT_CONFIG_INVALID' });
    expect((err as Error).message).toContain(text);
  });

  it('accepts a budget with zero jitter and zero grace, and a one-minute lifetime', () => {
    expect(() => checkBudget({ lifetimeSec: 60, renewAtFraction: 0.5, jitterFraction: 0, graceSec: 0 })).not.toThrow();
    expect(offlineToleranceSec({ lifetimeSec: 60, renewAtFraction: 0.5, jitterFraction: 0, graceSec: 0 })).toBe(30);
  });
});

describe('identityPhase', () => {
  const policy = { renewAtFraction: 0.5, jitterFraction: 0, graceSec: 3600 };
  const renewAt = T0 + 15 * DAY;
  const graceStart = cert.notAfter - 3_600_000;
  it.each([
    ['issued', T0, 'valid'],
    ['just before renewal', renewAt - 1, 'valid'],
    ['at renewal', renewAt, 'renew'],
    ['between renewal and grace', renewAt + DAY, 'renew'],
    ['just before grace', graceStart - 1, 'renew'],
    ['at grace start', graceStart, 'expiring'],
    ['1 ms before expiry', cert.notAfter - 1, 'expiring'],
    ['at expiry', cert.notAfter, 'expired'],
    ['long after expiry', cert.notAfter + 365 * DAY, 'expired'],
  ] as const)('%s -> %s', (_name, now, phase) => {
    expect(identityPhase(now, cert, policy, seed)).toBe(phase);
  });

  it('a certificate shorter than the budget expects goes straight from valid to expiring', () => {
    const short = { serial: 'ff', notBefore: T0, notAfter: T0 + 3_600_000 }; // 1 h, grace 1 h
    expect(identityPhase(T0, short, DEFAULT_OFFLINE_BUDGET, seed)).toBe('expiring');
  });
});

describe('nextWakeMs', () => {
  const policy = { renewAtFraction: 0.5, jitterFraction: 0, graceSec: 3600 };
  const renewAt = T0 + 15 * DAY;
  const graceStart = cert.notAfter - 3_600_000;
  it.each([
    ['far from any boundary: the tick', T0, 30_000, 30_000],
    ['close to renewal: until renewal', renewAt - 5000, 30_000, 5000],
    ['at renewal: the tick (renewal is now, not ahead)', renewAt, 30_000, 30_000],
    ['close to grace: until grace', graceStart - 1, 30_000, 1],
    ['in grace: until expiry', cert.notAfter - 10, 30_000, 10],
    ['expired: the tick', cert.notAfter + 1, 30_000, 30_000],
    ['with a long tick: until renewal', T0, 20 * DAY, 15 * DAY],
  ] as const)('%s', (_name, now, tick, expected) => {
    expect(nextWakeMs(now, cert, policy, seed, tick)).toBe(expected);
  });

  it('without a certificate sleeps one tick; never negative', () => {
    expect(nextWakeMs(T0, undefined, policy, seed, 30_000)).toBe(30_000);
    expect(nextWakeMs(T0, undefined, policy, seed, -5)).toBe(0);
  });
});

describe('reactionTo', () => {
  it.each<[ReactionCode, string]>([
    ['RATE_LIMITED', 'retry'],
    ['UNAVAILABLE', 'retry'],
    ['INTERNAL', 'retry'],
    ['TRANSPORT_TIMEOUT', 'retry'],
    ['TRANSPORT_UNREACHABLE', 'retry'],
    ['TRANSPORT_NOT_CONNECTED', 'retry'],
    ['TRANSPORT_CONNECTION_LOST', 'retry'],
    ['TRANSPORT_CONNECT_REFUSED', 'retry'],
    ['TRANSPORT_TLS_FAILED', 'retry'],
    ['CHALLENGE_UNKNOWN', 'restart'],
    ['CHALLENGE_EXPIRED', 'restart'],
    ['IDENTITY_EXPIRED', 'reattest'],
    ['IDENTITY_UNKNOWN', 'reattest'],
    ['TOKEN_USED', 'stop'],
    ['EK_UNTRUSTED', 'stop'],
    ['DEVICE_REVOKED', 'stop'],
    ['AK_MISMATCH', 'stop'],
    ['BAD_REQUEST', 'stop'],
    ['TRANSPORT_PAYLOAD_TOO_LARGE', 'stop'],
    ['TRANSPORT_INVALID_TOPIC', 'stop'],
  ])('%s -> %s', (code, reaction) => {
    expect(reactionTo(code)).toBe(reaction);
  });

  it('covers every rejection code, and every code errors.ts marks retryable retries', () => {
    for (const code of REJECTION_CODE_LIST) {
      expect(isReactionCode(code)).toBe(true);
      const r = reactionTo(code);
      expect(['retry', 'restart', 'reattest', 'stop']).toContain(r);
      expect(r === 'retry').toBe(REJECTION_CODES[code].retryable);
    }
  });

  it('isReactionCode refuses unknown codes', () => {
    expect(isReactionCode('NOT_A_CODE')).toBe(false);
    expect(isReactionCode('toString')).toBe(false);
  });
});
