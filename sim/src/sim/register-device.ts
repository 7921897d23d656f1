import { createHash } from 'node:crypto';
import type { BootstrapConfig } from '../../../agent/src/config.js';
import type { EmbeddedFleet } from '../../../broker-bridge/src/embedded-fleet.js';
import { mintEnrollmentToken } from '../../../common/enrollment-token.js';
import { NativeTpm } from '../../../native/lib/native-tpm.js';

/**
 * What the factory station does for one device, in one call, for the simulator, the benchmarks and
 * the tests that run a fleet: the device registered in the fleet's inventory with its EK and a fresh
 * one-time token (only the token's hash stored), and the bootstrap config the device gets.
 */
export interface DeviceEk {
  readonly ekCertificateDer: Buffer;
  /** hex SHA-256 of the EK's SubjectPublicKeyInfo. */
  readonly ekPublicHash: string;
}

/** Reads the ECC EK certificate from the TPM at `tcti` and derives the EK (flushed again). */
export async function readEk(tcti: string): Promise<DeviceEk> {
  const tpm = await NativeTpm.open(tcti);
  try {
    const ekCertificateDer = await tpm.readEkCertificate('ecc');
    if (!ekCertificateDer) throw new Error(`the TPM at ${tcti} has no ECC EK certificate`);
    const ek = await tpm.createEk('ecc');
    await tpm.flush(ek);
    return { ekCertificateDer, ekPublicHash: createHash('sha256').update(ek.spki).digest('hex') };
  } finally {
    await tpm.close();
  }
}

export async function registerDevice(
  fleet: EmbeddedFleet,
  d: DeviceEk & { readonly deviceId: string; readonly tcti: string; readonly metadata?: Readonly<Record<string, string>>; readonly tokenTtlMs?: number },
): Promise<BootstrapConfig> {
  const { token, tokenHash } = mintEnrollmentToken();
  const now = Date.now();
  const expiresAt = now + (d.tokenTtlMs ?? 3_600_000);
  await fleet.inventory.registerDevice(
    { deviceId: d.deviceId, ekPublicHash: d.ekPublicHash, ekCertificate: d.ekCertificateDer.toString('base64'), ekKind: 'ecc', metadata: { ...(d.metadata ?? {}) }, registeredAt: now },
    { tokenHash, deviceId: d.deviceId, ekPublicHash: d.ekPublicHash, createdAt: now, expiresAt },
  );
  return {
    v: 1,
    deviceId: d.deviceId,
    tcti: d.tcti,
    baseTopic: fleet.topics.base,
    enrollUrl: fleet.broker.enrollUrl,
    deviceUrl: fleet.broker.deviceUrl,
    trustBundle: fleet.trustBundle,
    token,
    tokenExpiresAt: expiresAt,
  };
}
