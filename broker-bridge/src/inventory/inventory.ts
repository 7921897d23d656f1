import { CodedError } from '../../../common/coded-error.js';
import type { CampaignDeviceRecord, CampaignRecord } from '../campaign/campaign.js';

/**
 * The fleet inventory: registered devices, their one-time enrollment tokens (hashed), issued
 * certificates, device status and event history, audit events and the (device, requestId) → response
 * cache that makes handlers idempotent.
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

  /**
   * Cached response for a request, for QoS1 redelivery and retries, keyed by (authenticated device,
   * requestId): one device's ids can never change another's answers. The newest RESPONSES_PER_DEVICE
   * per device are kept (older ones are pruned when a new one is stored).
   */
  getResponse(requester: string, requestId: string): CachedResponse | undefined;
  putResponse(response: CachedResponse): Promise<void>;

  /**
   * Atomically records a certificate issued by rotation: the certificate (kind 'rotate'), the device's
   * current serial/notAfter and lastRotationAt, the cached response and audit events. Earlier rotation
   * certificates of the device that were never confirmed (the device rolled back or died before
   * confirming) are marked superseded in the same write, so a device never holds more than its in-use
   * certificate plus the one being tried; `previousSerial` (the certificate the rotation began from,
   * possibly itself an unconfirmed rotation certificate the device is using) is never abandoned.
   * Rejects INVENTORY_NOT_FOUND for an unknown device, INVENTORY_REVOKED for a revoked one,
   * INVENTORY_CONFLICT when the serial exists already or the records name another device.
   */
  completeRotation(input: CompleteRotation): Promise<void>;

  /**
   * The device confirmed it works with `serial`: every other active (not superseded, not revoked)
   * certificate of the device is marked superseded, `serial` confirmed and made the device's current
   * one, and a 'rotation.confirmed' audit event is written, all in one write. Idempotent: a repeat
   * writes nothing and returns []. Rejects INVENTORY_NOT_FOUND when `serial` is not a certificate of
   * this device, INVENTORY_REVOKED when the device or the certificate is revoked, INVENTORY_CONFLICT
   * when `serial` itself was superseded (a newer rotation abandoned it).
   */
  confirmRotation(deviceId: string, serial: string, at: number): Promise<string[]>;

  /**
   * Atomically records a certificate issued by re-attestation (no token): certificate (kind
   * 'reattest'), device current serial and `reattestedAt`, cached response, audit. Every other active
   * certificate of the device is marked superseded in the same write: a device re-attests because it
   * lost or cannot use its identity, so the new certificate is its only one (there is no confirm step).
   * Rejects INVENTORY_NOT_FOUND / INVENTORY_REVOKED / INVENTORY_CONFLICT as completeRotation.
   */
  completeReattestation(input: CompleteReattestation): Promise<void>;

  /**
   * Marks the device revoked (refused rotation and re-attestation from then on) and offline (the broker
   * takes every right from its session, so its last will cannot say so), and every one of its
   * unrevoked certificates revoked with `reason`; audit event. Returns the serials revoked now.
   * Idempotent: a repeat writes nothing and returns []. Rejects INVENTORY_NOT_FOUND for an unknown
   * device. (CRLs and broker enforcement build on this.)
   */
  revokeDevice(deviceId: string, reason: string, at: number): Promise<string[]>;

  /**
   * Latest status a device published (retained status topic), `at` on the bridge clock: stores the
   * snapshot and `online`; `lastSeenAt` becomes `at` when the device is online or has just gone
   * offline (a last will), and stays when an offline status is redelivered (a retained message after a
   * bridge restart says nothing about when the device was last seen). The device's reported serial is
   * kept in `status.certSerial` only: `certSerial` stays what the fleet issued and confirmed. Called
   * for every status message: one small write, none for a redelivered identical offline status.
   * Accepted for revoked devices (their last words matter), which stay `online: false`. Rejects
   * INVENTORY_NOT_FOUND.
   */
  recordStatus(deviceId: string, status: DeviceStatusSnapshot, at: number): Promise<void>;

  /**
   * Appends device events to the device's history, deduplicated by event id (QoS1 redelivery, a resend
   * after a restart), and sets `lastSeenAt` to `at` (bridge clock, stored as each event's receivedAt).
   * Returns the events that were new, in input order. Audit events ('event.<type>') for security event
   * types. History is bounded: the newest DEVICE_EVENT_HISTORY events per device are kept, older ones
   * (and their dedupe entries) are pruned in the same write; so an id older than that window would be
   * taken as new. Accepted for revoked devices. Rejects INVENTORY_NOT_FOUND for an unknown device.
   */
  recordEvents(deviceId: string, events: readonly DeviceEventRecordInput[], at: number): Promise<DeviceEventRecord[]>;
  /** The device's event history in arrival order (read from disk: an operator query, not per message). */
  listDeviceEvents(deviceId: string): Promise<DeviceEventRecord[]>;

  appendAudit(events: readonly AuditEventInput[]): Promise<void>;
  listAudit(filter?: { deviceId?: string; type?: string }): Promise<AuditEvent[]>;
}

/**
 * Campaigns (broker-bridge/src/campaign/) and their devices, kept next to the inventory so a campaign
 * step, its device records and its audit events are written in one batch.
 */
export interface CampaignStore {
  listCampaigns(): CampaignRecord[];
  getCampaign(id: string): CampaignRecord | undefined;
  /** The campaign's devices (empty for an unknown campaign). */
  listCampaignDevices(id: string): CampaignDeviceRecord[];
  getCampaignDevice(id: string, deviceId: string): CampaignDeviceRecord | undefined;
  /**
   * Writes the campaign, the given device records (added or replaced) and the audit events at once.
   * `expect`: 'new' rejects INVENTORY_CONFLICT when the id exists; 'existing' rejects
   * INVENTORY_NOT_FOUND when it does not.
   */
  saveCampaign(campaign: CampaignRecord, devices: readonly CampaignDeviceRecord[], audit: readonly AuditEventInput[], expect: 'new' | 'existing'): Promise<void>;
}

/** Device event history kept per device (newest first survive); see recordEvents. */
export const DEVICE_EVENT_HISTORY = 1000;

/** Cached responses kept per device (the newest); a redelivery is never older than a few requests. */
export const RESPONSES_PER_DEVICE = 16;

export type InventoryErrorCode =
  | 'INVENTORY_CONFLICT'
  | 'INVENTORY_TOKEN_USED'
  | 'INVENTORY_NOT_FOUND'
  | 'INVENTORY_CLOSED'
  | 'INVENTORY_REVOKED'
  /** Another process (a running bridge, a station) holds the LevelDB directory. */
  | 'INVENTORY_LOCKED';

export class InventoryError extends CodedError<InventoryErrorCode> {}

export interface DeviceRegistration extends EkEvidence {
  readonly deviceId: string;
  /** hex SHA-256 of the EK's DER SubjectPublicKeyInfo. */
  readonly ekPublicHash: string;
  readonly ekKind: 'rsa' | 'ecc';
  readonly metadata: Readonly<Record<string, string>>;
  readonly registeredAt: number;
}

/**
 * Why the fleet trusts a device's EK (docs/hardware.md): its certificate (`ekCertificate`, chained to
 * a trusted TPM manufacturer), or the factory-trusted EK policy for TPMs that hold no certificate
 * (`ekTrust: 'factory'`, the EK's public key recorded at the factory, `ekTrustedBy` the station the
 * bridge let vouch for it). Exactly one of the two.
 */
export interface EkEvidence {
  /** DER EK certificate, base64. */
  readonly ekCertificate?: string;
  readonly ekTrust?: 'factory';
  /** DER SubjectPublicKeyInfo of a factory-trusted EK, base64. */
  readonly ekPublic?: string;
  /** The station that registered a factory-trusted EK. */
  readonly ekTrustedBy?: string;
}

/** The EK evidence fields of a registration, those it has only. */
export function ekEvidenceOf(d: EkEvidence): EkEvidence {
  return {
    ...(d.ekCertificate !== undefined ? { ekCertificate: d.ekCertificate } : {}),
    ...(d.ekTrust !== undefined ? { ekTrust: d.ekTrust } : {}),
    ...(d.ekPublic !== undefined ? { ekPublic: d.ekPublic } : {}),
    ...(d.ekTrustedBy !== undefined ? { ekTrustedBy: d.ekTrustedBy } : {}),
  };
}

export function sameEkEvidence(a: EkEvidence, b: EkEvidence): boolean {
  return a.ekCertificate === b.ekCertificate && a.ekTrust === b.ekTrust && a.ekPublic === b.ekPublic && a.ekTrustedBy === b.ekTrustedBy;
}

export interface DeviceRecord extends DeviceRegistration {
  readonly enrolledAt?: number;
  /** hex TPM Name of the AK bound to the EK by credential activation. */
  readonly akName?: string;
  readonly certSerial?: string;
  readonly certNotAfter?: number;
  readonly revokedAt?: number;
  readonly revocationReason?: string;
  readonly reattestedAt?: number;
  readonly lastRotationAt?: number;
  /** Last time the bridge heard from the device (status or event). */
  readonly lastSeenAt?: number;
  readonly online?: boolean;
  /** The device's latest status as it published it. */
  readonly status?: DeviceStatusSnapshot;
}

/** A device's status as ingested (the protocol's status body). */
export interface DeviceStatusSnapshot {
  readonly state: string;
  readonly online: boolean;
  readonly certSerial?: string;
  readonly certNotAfter?: number;
  readonly slot?: 'A' | 'B';
  readonly lastRotationAt?: number;
  readonly lastRotationResult?: string;
  readonly clockSkewMs?: number;
  readonly errorCode?: string;
  readonly agentVersion?: string;
  readonly tpmManufacturer?: string;
  readonly tpmFirmware?: string;
  readonly tpmEk?: string;
  readonly outboxPending?: number;
  readonly outboxDropped?: number;
  readonly crlNumber?: string;
  readonly trustBundleVersion?: number;
}

export interface DeviceEventRecordInput {
  /** The envelope requestId the device gave the event (unique per device). */
  readonly id: string;
  readonly type: string;
  /** Device clock. */
  readonly at: number;
  readonly seq: number;
  readonly details: Readonly<Record<string, string | number>>;
}

export interface DeviceEventRecord extends DeviceEventRecordInput {
  readonly deviceId: string;
  /** Bridge clock at ingestion. */
  readonly receivedAt: number;
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
  /** How it was issued (absent on records from before rotation existed: 'enroll'). */
  readonly kind?: 'enroll' | 'rotate' | 'reattest';
  /** Retired after the device confirmed a newer certificate, or abandoned by a newer rotation. */
  readonly supersededAt?: number;
  /** The device confirmed it connected with this certificate. */
  readonly confirmedAt?: number;
}

export interface CachedResponse {
  readonly requestId: string;
  readonly deviceId: string;
  /**
   * Who asked, when not the device itself on the mutual-TLS listener: the enrollment attempt's
   * `enr-…` client id. The cache is keyed by (requester ?? deviceId, requestId).
   */
  readonly requester?: string;
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

export interface CompleteRotation {
  readonly deviceId: string;
  readonly requestId: string;
  /** The certificate the rotation began from (rotateBegin's currentSerial); never abandoned by it. */
  readonly previousSerial: string;
  readonly certificate: CertificateRecord;
  readonly response: CachedResponse;
  readonly audit: readonly AuditEventInput[];
  readonly at: number;
}

export interface CompleteReattestation {
  readonly deviceId: string;
  readonly requestId: string;
  readonly certificate: CertificateRecord;
  readonly response: CachedResponse;
  readonly audit: readonly AuditEventInput[];
  readonly at: number;
}
