import type { Clock } from '../../common/clock.js';
import { mintEnrollmentToken } from '../../common/enrollment-token.js';
import type { DeviceRegistration, TokenRecord } from '../../broker-bridge/src/inventory/inventory.js';
import type { EkTrustStore } from '../../native/lib/ek-certificate.js';
import type { Tpm } from '../../native/lib/tpm.js';
import type { BootstrapConfig } from './bootstrap.js';
import { readFactoryTrustedEk, verifySuppliedEk, verifyTpmEk, type FactoryTrustedEk, type VerifiedEk } from './ek.js';
import { StationError } from './errors.js';

/**
 * One device on the factory line: prove the TPM's EK (ek.ts; or, under the factory-trusted EK policy,
 * record the EK of a TPM without a certificate), then produce the fleet registration,
 * a one-time enrollment token bound to this device id and EK (the fleet gets only its hash), and the
 * device's bootstrap config (the only place the token itself goes).
 */
export interface FleetEndpoints {
  /** mqtts://host:port of the enrollment listener (server-authenticated TLS). */
  readonly enrollUrl: string;
  /** mqtts://host:port of the device listener (mutual TLS). */
  readonly deviceUrl: string;
  /** PEM certificates the devices trust. */
  readonly trustBundle: readonly string[];
  readonly baseTopic: string;
}

export interface StationPolicy {
  readonly manufacturers: EkTrustStore;
  readonly fleet: FleetEndpoints;
  readonly clock: Clock;
  readonly tokenTtlSec: number;
  /**
   * The factory-trusted EK policy (docs/hardware.md), off by default: a TPM that holds no EK
   * certificate at all (and none was supplied for it) is registered by its EK public key instead of
   * being refused STATION_EK_MISSING. Never applies to a TPM whose certificate is refused.
   */
  readonly factoryTrustedEk?: boolean;
  /** Who vouches for factory-trusted EKs in a registration written straight to an inventory (the bridge records its station id itself). */
  readonly stationName?: string;
}

export interface ProvisionInput {
  readonly deviceId: string;
  readonly tcti: string;
  readonly metadata: Readonly<Record<string, string>>;
  /** DER EK certificate supplied for this device (manifest `ekCertificateFile`), used instead of the TPM's NV. */
  readonly ekCertificate?: Buffer;
}

export interface Provisioned {
  readonly device: DeviceRegistration;
  readonly token: TokenRecord;
  readonly bootstrap: BootstrapConfig;
}

export const DEFAULT_TOKEN_TTL_SEC = 7 * 86_400;

export async function provisionDevice(tpm: Tpm, input: ProvisionInput, policy: StationPolicy): Promise<Provisioned> {
  const now = policy.clock.now();
  const ek = await stationEk(tpm, input, policy, now);
  const { token, tokenHash } = mintEnrollmentToken();
  const expiresAt = now + policy.tokenTtlSec * 1000;
  const factory = !('certificate' in ek);
  return {
    device: {
      deviceId: input.deviceId,
      ekPublicHash: ek.publicHash,
      ...(factory
        ? { ekTrust: 'factory' as const, ekPublic: ek.spki.toString('base64'), ekTrustedBy: policy.stationName ?? 'station' }
        : { ekCertificate: ek.certificate.toString('base64') }),
      ekKind: ek.kind,
      metadata: { ...input.metadata },
      registeredAt: now,
    },
    token: { tokenHash, deviceId: input.deviceId, ekPublicHash: ek.publicHash, createdAt: now, expiresAt },
    bootstrap: {
      v: 1,
      deviceId: input.deviceId,
      tcti: input.tcti,
      ekKind: ek.kind,
      ...(factory ? { ekTrust: 'factory' as const } : {}),
      baseTopic: policy.fleet.baseTopic,
      enrollUrl: policy.fleet.enrollUrl,
      deviceUrl: policy.fleet.deviceUrl,
      trustBundle: [...policy.fleet.trustBundle],
      token,
      tokenExpiresAt: expiresAt,
    },
  };
}

/** The supplied certificate, else the TPM's own, else (policy permitting, no certificate at all) the factory-trusted EK. */
async function stationEk(tpm: Tpm, input: ProvisionInput, policy: StationPolicy, now: number): Promise<VerifiedEk | FactoryTrustedEk> {
  if (input.ekCertificate) return verifySuppliedEk(tpm, input.ekCertificate, policy.manufacturers, now);
  try {
    return await verifyTpmEk(tpm, policy.manufacturers, now);
  } catch (e) {
    if (!(policy.factoryTrustedEk && e instanceof StationError && e.code === 'STATION_EK_MISSING')) throw e;
  }
  return readFactoryTrustedEk(tpm);
}
