import type { Inventory } from './inventory.js';

/**
 * Test helper: a device registered and enrolled in `inventory` without a TPM, the way the bridge would
 * record it (registration with a token, then an enrollment consuming it). For tests about what comes
 * after enrollment (revocation, operators, CLIs, fuzzing). Only `deviceId` is required; without
 * `serial` the device is registered but not enrolled.
 */
export async function recordEnrolledDevice(
  inventory: Pick<Inventory, 'registerDevice' | 'completeEnrollment'>,
  d: {
    readonly deviceId: string;
    readonly serial?: string;
    readonly at: number;
    readonly pem?: string;
    readonly notBefore?: number;
    readonly notAfter?: number;
    readonly keySpkiHash?: string;
    readonly metadata?: Readonly<Record<string, string>>;
  },
): Promise<void> {
  const { deviceId, at } = d;
  await inventory.registerDevice(
    { deviceId, ekPublicHash: `ek-${deviceId}`, ekCertificate: 'AAAA', ekKind: 'ecc', metadata: d.metadata ?? {}, registeredAt: at },
    { tokenHash: `tok-${deviceId}`, deviceId, ekPublicHash: `ek-${deviceId}`, createdAt: at, expiresAt: at + 86_400_000 },
  );
  if (d.serial === undefined) return;
  await inventory.completeEnrollment({
    tokenHash: `tok-${deviceId}`,
    requestId: `req-${deviceId}`,
    deviceId,
    akName: '000b' + 'aa'.repeat(32),
    certificate: {
      serial: d.serial,
      deviceId,
      notBefore: d.notBefore ?? at,
      notAfter: d.notAfter ?? at + 86_400_000,
      issuedAt: at,
      pem: d.pem ?? 'PEM',
      keySpkiHash: d.keySpkiHash ?? 'k',
    },
    response: { requestId: `req-${deviceId}`, deviceId, topic: 't', payload: 'cA==', storedAt: at },
    audit: [],
    at,
  });
}
