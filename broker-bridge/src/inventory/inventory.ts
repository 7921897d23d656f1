import { CodedError } from '../../../common/coded-error.js';

/**
 * The fleet inventory: registered devices, their one-time enrollment tokens (hashed), issued
 * certificates, audit events and the requestId → response cache that makes handlers idempotent.
 *
 * Implementations: `LevelInventory` (embedded LevelDB, now); PostgreSQL later behind the same
 * interface. Methods that change several records do so atomically (all or nothing).
 */
export interface Inventory {
  open(): Promise<void>;
  close(): Promise<void>;

  /**
   * Registers a device and (optionally) its enrollment token. Idempotent: registering the same id
   * with the same EK again succeeds; a new token supersedes (deletes) the device's unused ones, so a
   * device never has two live tokens (a factory line re-run);
   * the same id with a different EK rejects with INVENTORY_CONFLICT.
   */
  registerDevice(device: DeviceRegistration, token?: TokenRecord): Promise<void>;
  getDevice(deviceId: string): DeviceRecord | undefined;
  listDevices(): DeviceRecord[];

  getToken(tokenHash: string): TokenRecord | undefined;

  /**
   * Atomically: marks the token used, records the enrollment on the device (AK Name, certificate) and
   * the certificate, caches the response for `requestId`, and appends audit events. Rejects with
   * INVENTORY_TOKEN_USED if the token was consumed meanwhile (nothing is written then).
   */
  completeEnrollment(input: CompleteEnrollment): Promise<void>;

  getCertificate(serial: string): CertificateRecord | undefined;
  listCertificates(deviceId?: string): CertificateRecord[];

  /** Cached response for a request, for QoS1 redelivery and retries. */
  getResponse(requestId: string): CachedResponse | undefined;
  putResponse(response: CachedResponse): Promise<void>;

  appendAudit(events: readonly AuditEventInput[]): Promise<void>;
  listAudit(filter?: { deviceId?: string; type?: string }): Promise<AuditEvent[]>;
}

export type InventoryErrorCode = 'INVENTORY_CONFLICT' | 'INVENTORY_TOKEN_USED' | 'INVENTORY_NOT_FOUND' | 'INVENTORY_CLOSED';

export class InventoryError extends CodedError<InventoryErrorCode> {}

export interface DeviceRegistration {
  readonly deviceId: string;
  /** hex SHA-256 of the EK's DER SubjectPublicKeyInfo. */
  readonly ekPublicHash: string;
  /** DER EK certificate, base64. */
  readonly ekCertificate: string;
  readonly ekKind: 'rsa' | 'ecc';
  readonly metadata: Readonly<Record<string, string>>;
  readonly registeredAt: number;
}

export interface DeviceRecord extends DeviceRegistration {
  readonly enrolledAt?: number;
  /** hex TPM Name of the AK bound to the EK by credential activation. */
  readonly akName?: string;
  readonly certSerial?: string;
  readonly certNotAfter?: number;
}

export interface TokenRecord {
  /** hex SHA-256 of the token; the token itself is never stored. */
  readonly tokenHash: string;
  readonly deviceId: string;
  readonly ekPublicHash: string;
  readonly createdAt: number;
  readonly expiresAt: number;
  readonly usedAt?: number;
  readonly usedByRequestId?: string;
}

export interface CertificateRecord {
  readonly serial: string;
  readonly deviceId: string;
  readonly notBefore: number;
  readonly notAfter: number;
  readonly issuedAt: number;
  readonly pem: string;
  /** hex SHA-256 of the certified key's SPKI. */
  readonly keySpkiHash: string;
  readonly revokedAt?: number;
  readonly revocationReason?: string;
}

export interface CachedResponse {
  readonly requestId: string;
  readonly deviceId: string;
  readonly topic: string;
  /** base64 of the exact payload sent. */
  readonly payload: string;
  readonly storedAt: number;
}

export interface AuditEventInput {
  readonly at: number;
  readonly type: string;
  readonly deviceId?: string;
  readonly details?: Readonly<Record<string, string | number | boolean>>;
}

export interface AuditEvent extends AuditEventInput {
  readonly seq: number;
}

export interface CompleteEnrollment {
  readonly tokenHash: string;
  readonly requestId: string;
  readonly deviceId: string;
  readonly akName: string;
  readonly certificate: CertificateRecord;
  readonly response: CachedResponse;
  readonly audit: readonly AuditEventInput[];
  readonly at: number;
}
