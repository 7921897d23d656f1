import { createHash } from 'node:crypto';
import { TAG, encodeOid, seq, tlv } from '../../common/der.js';

/**
 * PKCS#10 certificate request (RFC 2986) with subject CN=deviceId for `spki`, signed by `signDigest`
 * with ecdsa-with-SHA256. The agent passes a signer that calls TPM2_Sign, so the request is signed
 * inside the TPM (one TPM signature).
 */
export async function buildCsr(deviceId: string, spki: Buffer, signDigest: (sha256: Buffer) => Promise<Buffer>): Promise<Buffer> {
  const cn = tlv(TAG.SET, seq(encodeOid('2.5.4.3'), tlv(TAG.UTF8_STRING, Buffer.from(deviceId, 'utf8'))));
  const info = seq(tlv(TAG.INTEGER, Buffer.from([0])), seq(cn), spki, tlv(0xa0));
  const signature = await signDigest(createHash('sha256').update(info).digest());
  return seq(info, seq(encodeOid('1.2.840.10045.4.3.2')), tlv(TAG.BIT_STRING, Buffer.from([0]), signature));
}
