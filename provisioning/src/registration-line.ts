import { createPublicKey } from 'node:crypto';
import { ekEvidenceOf, type DeviceRegistration, type TokenRecord } from '../../broker-bridge/src/inventory/inventory.js';
import { readCertificate } from '../../native/lib/ek-certificate.js';
import { base64, int, literal, object, oneOf, optional, parseMessage, SchemaError, str, type Schema } from '../../common/protocol/schema.js';
import { EK_PUBLIC_MAX_BYTES } from '../../common/protocol/station.js';
import { DEVICE_ID_PATTERN } from '../../common/protocol/topics.js';
import { ekPublicHash } from './ek.js';
import { metadataSchema } from './metadata.js';

/**
 * One line of an export file: `{ "v": 1, "device": DeviceRegistration, "token": TokenRecord }`, binary
 * fields in base64. The token record holds the token's hash only. Decoding checks everything the
 * fleet will rely on, including that the EK hash is the hash of the certificate's key.
 */
export interface Registration {
  readonly device: DeviceRegistration;
  readonly token: TokenRecord;
}

const hex64 = str({ min: 64, max: 64, pattern: /^[0-9a-f]{64}$/ });
const time = int({ min: 0, max: 8_640_000_000_000_000 });
/** Base64 text, checked as such and kept as text. */
const base64Text = (maxBytes: number): Schema<string> => ({
  parse(v, path) {
    base64({ maxBytes, minBytes: 1 }).parse(v, path);
    return v as string;
  },
});
const certificateB64 = base64Text(4096);

const lineSchema = object({
  v: literal(1),
  device: object({
    deviceId: str({ max: 64, pattern: DEVICE_ID_PATTERN }),
    ekPublicHash: hex64,
    ekCertificate: optional(certificateB64),
    ekTrust: optional(literal('factory')),
    ekPublic: optional(base64Text(EK_PUBLIC_MAX_BYTES)),
    ekTrustedBy: optional(str({ min: 1, max: 128 })),
    ekKind: oneOf(['rsa', 'ecc'] as const),
    metadata: metadataSchema,
    registeredAt: time,
  }),
  token: object({ tokenHash: hex64, deviceId: str({ max: 64, pattern: DEVICE_ID_PATTERN }), ekPublicHash: hex64, createdAt: time, expiresAt: time }),
});

const MAX_LINE_BYTES = 16_384;

export function encodeRegistrationLine(device: DeviceRegistration, token: TokenRecord): string {
  const { deviceId, ekPublicHash: ek, ekKind, metadata, registeredAt } = device;
  const { tokenHash, createdAt, expiresAt } = token;
  return JSON.stringify({
    v: 1,
    device: { deviceId, ekPublicHash: ek, ...ekEvidenceOf(device), ekKind, metadata, registeredAt },
    token: { tokenHash, deviceId: token.deviceId, ekPublicHash: token.ekPublicHash, createdAt, expiresAt },
  });
}

/** Parses and checks one line; throws a SchemaError whose message names the offending field. */
export function decodeRegistrationLine(text: string): Registration {
  const { device, token } = parseMessage(text, lineSchema, MAX_LINE_BYTES);
  const bad = (path: string, message: string): never => {
    throw new SchemaError('SCHEMA_INVALID', path, message);
  };
  if (token.deviceId !== device.deviceId) bad('token.deviceId', 'differs from device.deviceId');
  if (token.ekPublicHash !== device.ekPublicHash) bad('token.ekPublicHash', 'differs from device.ekPublicHash');
  if (token.expiresAt <= token.createdAt) bad('token.expiresAt', 'not after createdAt');
  // Exactly one kind of EK evidence: a certificate, or the factory-trusted EK policy with the EK's SPKI.
  const factory = device.ekTrust === 'factory';
  if (factory ? device.ekCertificate !== undefined || device.ekPublic === undefined || device.ekTrustedBy === undefined : device.ekCertificate === undefined) {
    bad('device', 'needs either ekCertificate, or ekTrust "factory" with ekPublic and ekTrustedBy');
  }
  if (!factory && (device.ekPublic !== undefined || device.ekTrustedBy !== undefined)) bad('device.ekPublic', 'only with ekTrust "factory"');
  let key;
  try {
    // Read as the EK verifier reads certificates: vendor DER quirks included.
    const spki = factory ? Buffer.from(device.ekPublic!, 'base64') : readCertificate(Buffer.from(device.ekCertificate!, 'base64')).fields.spki;
    key = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  } catch {
    return bad(factory ? 'device.ekPublic' : 'device.ekCertificate', factory ? 'not a public key' : 'not an X.509 certificate');
  }
  const what = factory ? 'ekPublic' : "the certificate's key";
  if ((key.asymmetricKeyType === 'ec' ? 'ecc' : key.asymmetricKeyType) !== device.ekKind) bad('device.ekKind', `${what} is a ${key.asymmetricKeyType} key`);
  if (ekPublicHash(key.export({ type: 'spki', format: 'der' })) !== device.ekPublicHash) bad('device.ekPublicHash', `not the hash of ${what}`);
  return { device, token };
}
