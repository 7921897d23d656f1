import { createHash } from 'node:crypto';
import type { BootstrapConfig } from '../../../agent/src/config.js';
import type { EmbeddedFleet } from '../../../broker-bridge/src/embedded-fleet.js';
import { mintEnrollmentToken } from '../../../common/enrollment-token.js';
import { preferredEk } from '../../../native/lib/ek-order.js';
import { NativeTpm } from '../../../native/lib/native-tpm.js';
import type { EkKind } from '../../../native/lib/tpm.js';

/**
 * What the factory station does for one device, in one call, for the simulator, the benchmarks and
 * the tests that run a fleet: the device registered in the fleet's inventory with its EK and a fresh
 * one-time token (only the token's hash stored), and the bootstrap config the device gets.
 */
export interface DeviceEk {
  /** The EK the device attests with: ECC when the TPM has an ECC EK certificate, else RSA (as the agent picks). */
  readonly ekKind: EkKind;
  readonly ekCertificateDer: Buffer;
  /** hex SHA-256 of the EK's SubjectPublicKeyInfo. */
  readonly ekPublicHash: string;
}

/**
 * Reads the EK certificate from the TPM at `tcti` and derives the EK (flushed again): the EK of `kind`,
 * else the one the agent picks without a registered kind (native/lib/ek-order.ts).
 */
export async function readEk(tcti: string, kind?: EkKind): Promise<DeviceEk> {
  const tpm = await NativeTpm.open(tcti);
  try {
    const ekKind = (await preferredEk(tpm, kind))?.kind;
    const ekCertificateDer = ekKind && (await tpm.readEkCertificate(ekKind));
    if (!ekKind || !ekCertificateDer) throw new Error(`the TPM at ${tcti} has no ${kind ? `${kind} ` : ''}EK certificate`);
    const ek = await tpm.createEk(ekKind);
    await tpm.flush(ek);
    return { ekKind, ekCertificateDer, ekPublicHash: createHash('sha256').update(ek.spki).digest('hex') };
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
    { deviceId: d.deviceId, ekPublicHash: d.ekPublicHash, ekCertificate: d.ekCertificateDer.toString('base64'), ekKind: d.ekKind, metadata: { ...(d.metadata ?? {}) }, registeredAt: now },
    { tokenHash, deviceId: d.deviceId, ekPublicHash: d.ekPublicHash, createdAt: now, expiresAt },
  );
  return {
    v: 1,
    deviceId: d.deviceId,
    tcti: d.tcti,
    ekKind: d.ekKind,
    baseTopic: fleet.topics.base,
    enrollUrl: fleet.broker.enrollUrl,
    deviceUrl: fleet.broker.deviceUrl,
    trustBundle: fleet.trustBundle,
    token,
    tokenExpiresAt: expiresAt,
  };
}
