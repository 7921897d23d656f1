import { createHash } from 'node:crypto';
import { isCodedError } from '../../../common/coded-error.js';
import type { Clock } from '../../../common/clock.js';
import { deviceRefusal, sameMetadata, type StationDevice, type StationDeviceResult } from '../../../common/protocol/station.js';
import { EkCertificateError, verifyEkCertificate, type EkTrustStore } from '../../../native/lib/ek-certificate.js';
import type { Inventory, TokenRecord } from '../inventory/inventory.js';

/**
 * Registers one device a factory station sent (common/protocol/station.ts) into the inventory, after
 * the checks the enrollment service will later rely on, in this order, stopping at the first refusal:
 * 1. the EK certificate chains to a trusted manufacturer (the EkTrustStore the enrollment service
 *    uses): EK_UNTRUSTED (also for an unparseable certificate), EK_CERT_EXPIRED;
 * 2. `ekPublicHash` is the SHA-256 of the certified key and `ekKind` its type; the token's lifetime
 *    is sane (not expired, at most TOKEN_MAX_LIFETIME_MS, created before it expires):
 *    REGISTRATION_INVALID;
 * 3. against the inventory: the id bound to another EK, the EK to another id, the token hash to
 *    another device or already used by another registration: REGISTRATION_CONFLICT; a revoked device:
 *    REGISTRATION_REVOKED; a token minted before the device last enrolled and no longer stored:
 *    REGISTRATION_SUPERSEDED (an old export line must not revive a token the device moved past).
 * Then: exactly what is stored already → `unchanged` (nothing written); otherwise the inventory
 * write (`registered` for a new device, `updated` for new metadata or a new token, which supersedes
 * the device's unused ones).
 *
 * Callers serialize `register` calls (check-then-write must not interleave with another registration).
 * Resolves every refusal as a result; rejects only when the inventory write fails (with the
 * inventory's error, e.g. INVENTORY_CLOSED), which the caller turns into UNAVAILABLE or INTERNAL.
 */
export interface RegistrarOptions {
  readonly inventory: Inventory;
  readonly ekTrust: EkTrustStore;
  readonly clock: Clock;
}

/** The longest token lifetime accepted (the station's own limit is 366 days). */
export const TOKEN_MAX_LIFETIME_MS = 366 * 86_400_000;

export class Registrar {
  readonly #o: RegistrarOptions;

  constructor(o: RegistrarOptions) {
    this.#o = o;
  }

  async register(d: StationDevice): Promise<StationDeviceResult> {
    const now = this.#o.clock.now();
    const refuse = (code: Parameters<typeof deviceRefusal>[1], message?: string) => deviceRefusal(d.deviceId, code, message);

    let verified;
    try {
      verified = verifyEkCertificate(d.ekCertificate, this.#o.ekTrust, now);
    } catch (e) {
      if (e instanceof EkCertificateError && e.code === 'EK_CERT_EXPIRED') return refuse('EK_CERT_EXPIRED', e.message);
      return refuse('EK_UNTRUSTED', e instanceof EkCertificateError ? `${e.code}: ${e.message}` : undefined);
    }
    if (createHash('sha256').update(verified.ekSpki).digest('hex') !== d.ekPublicHash) {
      return refuse('REGISTRATION_INVALID', "ekPublicHash is not the hash of the certificate's key");
    }
    const keyType = verified.ekKeyType === 'ec' ? 'ecc' : verified.ekKeyType;
    if (keyType !== d.ekKind) return refuse('REGISTRATION_INVALID', `ekKind is ${d.ekKind} but the certificate holds a ${keyType} key`);
    if (d.tokenExpiresAt <= now) return refuse('REGISTRATION_INVALID', 'the token has expired');
    if (d.tokenExpiresAt - now > TOKEN_MAX_LIFETIME_MS) return refuse('REGISTRATION_INVALID', 'the token lasts longer than 366 days');
    if (d.tokenCreatedAt >= d.tokenExpiresAt) return refuse('REGISTRATION_INVALID', 'the token expires before it was created');

    const inv = this.#o.inventory;
    const existing = inv.getDevice(d.deviceId);
    if (existing && existing.ekPublicHash !== d.ekPublicHash) return refuse('REGISTRATION_CONFLICT', `device ${d.deviceId} is registered with another EK`);
    if (!existing) {
      const holder = inv.listDevices().find((x) => x.ekPublicHash === d.ekPublicHash);
      if (holder) return refuse('REGISTRATION_CONFLICT', `this EK is registered as device ${holder.deviceId}`);
    }
    if (existing?.revokedAt !== undefined) return refuse('REGISTRATION_REVOKED', `device ${d.deviceId} is revoked`);
    const known = inv.getToken(d.tokenHash);
    if (known && (known.deviceId !== d.deviceId || known.ekPublicHash !== d.ekPublicHash)) return refuse('REGISTRATION_CONFLICT', 'the token hash belongs to another device');
    if (!known && existing?.enrolledAt !== undefined && existing.enrolledAt >= d.tokenCreatedAt) {
      return refuse('REGISTRATION_SUPERSEDED', `device ${d.deviceId} enrolled after this token was minted`);
    }
    const ekCertificate = d.ekCertificate.toString('base64');
    if (existing && known && existing.ekCertificate === ekCertificate && sameMetadata(existing.metadata, d.metadata)) {
      return { deviceId: d.deviceId, ok: true, outcome: 'unchanged' };
    }
    // A token the inventory holds goes back as stored (perhaps used), never as new.
    const token: TokenRecord = known ?? { tokenHash: d.tokenHash, deviceId: d.deviceId, ekPublicHash: d.ekPublicHash, createdAt: d.tokenCreatedAt, expiresAt: d.tokenExpiresAt };
    try {
      await inv.registerDevice({ deviceId: d.deviceId, ekPublicHash: d.ekPublicHash, ekCertificate, ekKind: d.ekKind, metadata: { ...d.metadata }, registeredAt: now }, token);
    } catch (e) {
      const code = isCodedError(e) ? e.code : undefined;
      if (code === 'INVENTORY_CONFLICT') return refuse('REGISTRATION_CONFLICT', (e as Error).message);
      throw e;
    }
    return { deviceId: d.deviceId, ok: true, outcome: existing ? 'updated' : 'registered' };
  }
}
