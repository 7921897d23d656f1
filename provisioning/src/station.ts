import type { Clock } from '../../common/clock.js';
import { mintEnrollmentToken } from '../../common/enrollment-token.js';
import type { DeviceRegistration, TokenRecord } from '../../broker-bridge/src/inventory/inventory.js';
import type { EkTrustStore } from '../../native/lib/ek-certificate.js';
import type { Tpm } from '../../native/lib/tpm.js';
import type { BootstrapConfig } from './bootstrap.js';
import { verifyTpmEk } from './ek.js';

/**
 * One device on the factory line: prove the TPM's EK (ek.ts), then produce the fleet registration,
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

export const DEFAULT_TOKEN_TTL_SEC = 7 * 86_400;

export async function provisionDevice(tpm: Tpm, input: ProvisionInput, policy: StationPolicy): Promise<Provisioned> {
  const now = policy.clock.now();
  const ek = await verifyTpmEk(tpm, policy.manufacturers, now);
  const { token, tokenHash } = mintEnrollmentToken();
  const expiresAt = now + policy.tokenTtlSec * 1000;
  return {
    device: {
      deviceId: input.deviceId,
      ekPublicHash: ek.publicHash,
      ekCertificate: ek.certificate.toString('base64'),
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
      baseTopic: policy.fleet.baseTopic,
      enrollUrl: policy.fleet.enrollUrl,
      deviceUrl: policy.fleet.deviceUrl,
      trustBundle: [...policy.fleet.trustBundle],
      token,
      tokenExpiresAt: expiresAt,
    },
  };
}
