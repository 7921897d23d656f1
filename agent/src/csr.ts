import { createHash } from 'node:crypto';
import { TAG, encodeOid, seq, tlv } from '../../common/der.js';
import type { Tpm, TpmKey } from '../../native/lib/tpm.js';

/**
 * PKCS#10 certificate request (RFC 2986): subject CN=deviceId, the key's SubjectPublicKeyInfo, no
 * attributes, ecdsa-with-SHA256. `signDigest` receives SHA-256 of the CertificationRequestInfo DER and
 * returns a DER ECDSA-Sig-Value.
 */
const OID_CN = '2.5.4.3';
const OID_ECDSA_WITH_SHA256 = '1.2.840.10045.4.3.2';

export async function buildCsr(deviceId: string, spki: Buffer, signDigest: (sha256: Buffer) => Promise<Buffer>): Promise<Buffer> {
  const cn = tlv(TAG.SET, seq(encodeOid(OID_CN), tlv(TAG.UTF8_STRING, Buffer.from(deviceId, 'utf8'))));
  const info = seq(tlv(TAG.INTEGER, Buffer.from([0])), seq(cn), spki, tlv(0xa0));
  const signature = await signDigest(createHash('sha256').update(info).digest());
  return seq(info, seq(encodeOid(OID_ECDSA_WITH_SHA256)), tlv(TAG.BIT_STRING, Buffer.from([0]), signature));
}

/** The CSR for a TPM-resident key, signed inside the TPM (one TPM2_Sign). */
export function buildTpmCsr(tpm: Tpm, key: TpmKey, deviceId: string): Promise<Buffer> {
  return buildCsr(deviceId, key.spki, async (digest) => (await tpm.sign(key, digest)).der);
}
