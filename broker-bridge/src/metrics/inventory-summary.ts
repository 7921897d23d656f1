import type { CertificateRecord, DeviceRecord } from '../inventory/inventory.js';

/**
 * What the inventory gauges show, computed in one pass over the devices and one over the
 * certificates: O(devices + certificates), no lookups, so a scrape of a 10k-device fleet stays in the
 * low milliseconds. Pure: `now` is the caller's (injected) clock.
 *
 * Certificate states, first match wins: revoked, superseded (retired by a confirmed rotation or a
 * re-attestation), expired (notAfter ≤ now), not_yet_valid (notBefore > now), valid.
 * Devices: revoked (revokedAt set), active (enrolled and not revoked), registered (neither: waiting to
 * enroll).
 */
export const CERTIFICATE_STATES = ['valid', 'expired', 'revoked', 'superseded', 'not_yet_valid'] as const;
export type CertificateState = (typeof CERTIFICATE_STATES)[number];

export const EXPIRY_WINDOWS = [
  { label: '1d', ms: 86_400_000 },
  { label: '7d', ms: 7 * 86_400_000 },
  { label: '30d', ms: 30 * 86_400_000 },
] as const;
export type ExpiryWindow = (typeof EXPIRY_WINDOWS)[number]['label'];

export const DEVICE_STATES = ['registered', 'active', 'revoked'] as const;
export type DeviceState = (typeof DEVICE_STATES)[number];

export interface InventorySummary {
  readonly certificates: Readonly<Record<CertificateState, number>>;
  /** Valid certificates whose notAfter falls within the window from now. */
  readonly expiring: Readonly<Record<ExpiryWindow, number>>;
  readonly devices: Readonly<Record<DeviceState, number>>;
  /** Active devices holding at least one valid certificate. */
  readonly activeWithValidCertificate: number;
  /** Active devices whose latest status says online. */
  readonly online: number;
  /** Per active device that was ever heard from: seconds since its last status or event (≥ 0). */
  readonly secondsSinceLastSeen: readonly number[];
  /** Active devices never heard from since they enrolled. */
  readonly neverSeen: number;
}

export function certificateState(c: CertificateRecord, now: number): CertificateState {
  if (c.revokedAt !== undefined) return 'revoked';
  if (c.supersededAt !== undefined) return 'superseded';
  if (c.notAfter <= now) return 'expired';
  if (c.notBefore > now) return 'not_yet_valid';
  return 'valid';
}

export function deviceState(d: DeviceRecord): DeviceState {
  if (d.revokedAt !== undefined) return 'revoked';
  return d.enrolledAt !== undefined ? 'active' : 'registered';
}

export function summarizeInventory(devices: readonly DeviceRecord[], certificates: readonly CertificateRecord[], now: number): InventorySummary {
  const certs = { valid: 0, expired: 0, revoked: 0, superseded: 0, not_yet_valid: 0 };
  const expiring = { '1d': 0, '7d': 0, '30d': 0 };
  const withValid = new Set<string>();
  for (const c of certificates) {
    const state = certificateState(c, now);
    certs[state]++;
    if (state !== 'valid') continue;
    withValid.add(c.deviceId);
    const left = c.notAfter - now;
    for (const w of EXPIRY_WINDOWS) if (left <= w.ms) expiring[w.label]++;
  }
  const states = { registered: 0, active: 0, revoked: 0 };
  let activeWithValidCertificate = 0;
  let online = 0;
  let neverSeen = 0;
  const secondsSinceLastSeen: number[] = [];
  for (const d of devices) {
    const state = deviceState(d);
    states[state]++;
    if (state !== 'active') continue;
    if (withValid.has(d.deviceId)) activeWithValidCertificate++;
    if (d.online === true) online++;
    if (d.lastSeenAt === undefined) neverSeen++;
    else secondsSinceLastSeen.push(Math.max(0, now - d.lastSeenAt) / 1000);
  }
  return { certificates: certs, expiring, devices: states, activeWithValidCertificate, online, secondsSinceLastSeen, neverSeen };
}
