import { randomBytes } from 'node:crypto';
import { encode } from '../../common/protocol/messages.js';
import type { EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import { connectEnrollment, exchange, newRequestId, type Answer } from '../enrollment/scripted-device.js';

/**
 * An enrollment with a token the fleet never issued, over the real enrollment listener: well formed in
 * every field (random bytes where TPM structures go; the token is checked first), so the bridge refuses
 * it TOKEN_UNKNOWN. Resolves with the bridge's answer.
 */
export async function enrollWithUnknownToken(fleet: EmbeddedFleet, deviceId = 'stranger'): Promise<Answer> {
  const t = await connectEnrollment(fleet.broker.enrollUrl, fleet.trustBundle[0]!, deviceId);
  try {
    const requestId = newRequestId();
    const body = {
      deviceId,
      token: randomBytes(32).toString('base64url'),
      ekKind: 'ecc' as const,
      ekCertificate: randomBytes(300),
      ekPublic: randomBytes(120),
      akPublic: randomBytes(90),
      keyPublic: randomBytes(90),
      csr: randomBytes(200),
    };
    return await exchange(t, fleet.topics, deviceId, 'enroll', encode('enroll', requestId, Date.now(), body), requestId);
  } finally {
    await t.close();
  }
}
