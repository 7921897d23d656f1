import { createHash } from 'node:crypto';
import type { Clock } from '../../common/clock.js';
import { CodedError } from '../../common/coded-error.js';
import { mintEnrollmentToken } from '../../common/enrollment-token.js';
import { EkCertificateError, verifyEkCertificate, type EkTrustStore } from '../../native/lib/ek-certificate.js';
import type { EkKind, Tpm } from '../../native/lib/tpm.js';
import type { BootstrapConfig } from '../../agent/src/config.js';
import type { DeviceRegistration, TokenRecord } from '../../broker-bridge/src/inventory/inventory.js';

/**
 * One device on the factory line: read and verify the TPM's EK certificate against the trusted TPM
 * manufacturers, re-derive the EK and check it is the certified key, then produce the fleet
 * registration (device + hashed one-time token bound to this device and EK) and the device's
 * bootstrap config (which carries the token itself; it never goes anywhere else).
 */
export type StationErrorCode =
  | 'STATION_EK_MISSING'
  | 'STATION_EK_UNTRUSTED'
  | 'STATION_EK_MISMATCH'
  | 'STATION_MANIFEST_INVALID'
  | 'STATION_CONFLICT'
  | 'STATION_IO';

export class StationError extends CodedError<StationErrorCode> {}

export interface FleetEndpoints {
  readonly enrollUrl: string;
  readonly deviceUrl: string;
  readonly trustBundle: readonly string[];
  readonly baseTopic: string;
}

export interface ProvisionInput {
  readonly deviceId: string;
  readonly tcti: string;
  readonly metadata: Readonly<Record<string, string>>;
}

export interface Provisioned {
  readonly device: DeviceRegistration;
  readonly token: TokenRecord;
  readonly bootstrap: BootstrapConfig;
}

export async function provisionDevice(
  tpm: Tpm,
  input: ProvisionInput,
  opts: { manufacturers: EkTrustStore; fleet: FleetEndpoints; clock: Clock; tokenTtlSec: number },
): Promise<Provisioned> {
  let kind: EkKind = 'ecc';
  let cert = await tpm.readEkCertificate('ecc');
  if (!cert) {
    kind = 'rsa';
    cert = await tpm.readEkCertificate('rsa');
  }
  if (!cert) throw new StationError('STATION_EK_MISSING', `TPM at ${input.tcti} has no EK certificate`);
  const now = opts.clock.now();
  let ekSpki: Buffer;
  try {
    ekSpki = verifyEkCertificate(cert, opts.manufacturers, now).ekSpki;
  } catch (e) {
    const why = e instanceof EkCertificateError ? e.message : String(e);
    throw new StationError('STATION_EK_UNTRUSTED', `EK certificate refused: ${why}`, { cause: e });
  }
  const ek = await tpm.createEk(kind);
  try {
    if (!ek.spki.equals(ekSpki)) throw new StationError('STATION_EK_MISMATCH', 'the TPM\'s EK is not the key its EK certificate certifies');
  } finally {
    await tpm.flush(ek);
  }
  const ekPublicHash = createHash('sha256').update(ekSpki).digest('hex');
  const { token, tokenHash } = mintEnrollmentToken();
  const expiresAt = now + opts.tokenTtlSec * 1000;
  return {
    device: { deviceId: input.deviceId, ekPublicHash, ekCertificate: cert.toString('base64'), ekKind: kind, metadata: { ...input.metadata }, registeredAt: now },
    token: { tokenHash, deviceId: input.deviceId, ekPublicHash, createdAt: now, expiresAt },
    bootstrap: {
      v: 1,
      deviceId: input.deviceId,
      tcti: input.tcti,
      baseTopic: opts.fleet.baseTopic,
      enrollUrl: opts.fleet.enrollUrl,
      deviceUrl: opts.fleet.deviceUrl,
      trustBundle: [...opts.fleet.trustBundle],
      token,
      tokenExpiresAt: expiresAt,
    },
  };
}
