import { createHash, createPublicKey } from 'node:crypto';
import { isCodedError } from '../../../common/coded-error.js';
import type { Clock } from '../../../common/clock.js';
import { deviceRefusal, sameMetadata, type StationDevice, type StationDeviceResult } from '../../../common/protocol/station.js';
import { EkCertificateError, verifyEkCertificate, type EkTrustStore } from '../../../native/lib/ek-certificate.js';
import { ekEvidenceOf, sameEkEvidence, type EkEvidence, type Inventory, type TokenRecord } from '../inventory/inventory.js';

/**
 * Registers one device a factory station sent (common/protocol/station.ts) into the inventory, after
 * the checks the enrollment service will later rely on, in this order, stopping at the first refusal:
 * 1. the EK certificate chains to a trusted manufacturer (the EkTrustStore the enrollment service
 *    uses): EK_UNTRUSTED (also for an unparseable certificate), EK_CERT_EXPIRED. Or, for a TPM
 *    without an EK certificate (`ekTrust: 'factory'`, the EK's SPKI in `ekPublic`): the sending
 *    station is one the factory-trusted EK policy names (`factoryTrustedEkStations`), else
 *    EK_UNTRUSTED; a device with neither a certificate nor that policy, or with both: REGISTRATION_INVALID;
 * 2. `ekPublicHash` is the SHA-256 of the certified (or recorded) key and `ekKind` its type; the token's lifetime
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
  /** Stations that may register factory-trusted EKs (TPMs without an EK certificate). Default: none. */
  readonly factoryTrustedEkStations?: readonly string[];
}

/** The longest token lifetime accepted (the station's own limit is 366 days). */
export const TOKEN_MAX_LIFETIME_MS = 366 * 86_400_000;

export class Registrar {
  readonly #o: RegistrarOptions;

  constructor(o: RegistrarOptions) {
    this.#o = o;
  }

  /** `station`: the id of the station that sent the device (from its authenticated topic). */
  async register(d: StationDevice, station?: string): Promise<StationDeviceResult> {
    const now = this.#o.clock.now();
    const refuse = (code: Parameters<typeof deviceRefusal>[1], message?: string) => deviceRefusal(d.deviceId, code, message);

    let ekSpki: Buffer;
    let keyType: string | undefined;
    let evidence: EkEvidence;
    if (d.ekTrust === 'factory') {
      if (d.ekCertificate) return refuse('REGISTRATION_INVALID', 'a factory-trusted EK comes without an EK certificate');
      if (!d.ekPublic) return refuse('REGISTRATION_INVALID', 'a factory-trusted EK needs ekPublic');
      if (station === undefined || !(this.#o.factoryTrustedEkStations ?? []).includes(station)) {
        return refuse('EK_UNTRUSTED', `station ${station ?? '(unknown)'} may not register factory-trusted EKs (factoryTrustedEkStations)`);
      }
      try {
        const key = createPublicKey({ key: d.ekPublic, format: 'der', type: 'spki' });
        ekSpki = key.export({ type: 'spki', format: 'der' });
        keyType = key.asymmetricKeyType;
      } catch {
        return refuse('REGISTRATION_INVALID', 'ekPublic is not a public key');
      }
      if (!ekSpki.equals(d.ekPublic)) return refuse('REGISTRATION_INVALID', 'ekPublic is not a DER SubjectPublicKeyInfo');
      evidence = { ekTrust: 'factory', ekPublic: d.ekPublic.toString('base64'), ekTrustedBy: station };
    } else {
      if (!d.ekCertificate) return refuse('REGISTRATION_INVALID', 'no EK certificate (and not a factory-trusted EK)');
      if (d.ekPublic) return refuse('REGISTRATION_INVALID', 'ekPublic goes only with a factory-trusted EK');
      let verified;
      try {
        verified = verifyEkCertificate(d.ekCertificate, this.#o.ekTrust, now);
      } catch (e) {
        if (e instanceof EkCertificateError && e.code === 'EK_CERT_EXPIRED') return refuse('EK_CERT_EXPIRED', e.message);
        return refuse('EK_UNTRUSTED', e instanceof EkCertificateError ? `${e.code}: ${e.message}` : undefined);
      }
      ekSpki = verified.ekSpki;
      keyType = verified.ekKeyType;
      evidence = { ekCertificate: d.ekCertificate.toString('base64') };
    }
    const what = evidence.ekTrust ? 'ekPublic' : "the certificate's key";
    if (createHash('sha256').update(ekSpki).digest('hex') !== d.ekPublicHash) {
      return refuse('REGISTRATION_INVALID', `ekPublicHash is not the hash of ${what}`);
    }
    const kind = keyType === 'ec' ? 'ecc' : keyType;
    if (kind !== d.ekKind) return refuse('REGISTRATION_INVALID', `ekKind is ${d.ekKind} but ${what} is a ${String(keyType)} key`);
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
    if (existing && known && sameEkEvidence(ekEvidenceOf(existing), evidence) && sameMetadata(existing.metadata, d.metadata)) {
      return { deviceId: d.deviceId, ok: true, outcome: 'unchanged' };
    }
    // A token the inventory holds goes back as stored (perhaps used), never as new.
    const token: TokenRecord = known ?? { tokenHash: d.tokenHash, deviceId: d.deviceId, ekPublicHash: d.ekPublicHash, createdAt: d.tokenCreatedAt, expiresAt: d.tokenExpiresAt };
    try {
      await inv.registerDevice({ deviceId: d.deviceId, ekPublicHash: d.ekPublicHash, ...evidence, ekKind: d.ekKind, metadata: { ...d.metadata }, registeredAt: now }, token);
    } catch (e) {
      const code = isCodedError(e) ? e.code : undefined;
      if (code === 'INVENTORY_CONFLICT') return refuse('REGISTRATION_CONFLICT', (e as Error).message);
      throw e;
    }
    return { deviceId: d.deviceId, ok: true, outcome: existing ? 'updated' : 'registered' };
  }
}
