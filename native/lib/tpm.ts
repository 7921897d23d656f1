import type { TpmPublic } from './wire/public.js';
import type { Attest } from './wire/attest.js';

/**
 * A TPM 2.0 as the agent and the factory station use it. One implementation talks to a real TPM
 * through tpm2-tss ESAPI (`NativeTpm`); the conformance suite in native/test runs against swtpm.
 *
 * Concurrency: calls may be issued concurrently; the implementation serializes them in FIFO order on
 * one TPM context (ESAPI forbids concurrent use). Every call rejects with a `TpmError` whose `code`
 * comes from the closed set in tpm-error.ts; nothing throws strings, nothing crashes the process.
 *
 * Keys: every object this interface creates is non-duplicable and TPM-bound (fixedTPM, fixedParent,
 * sensitiveDataOrigin). Private parts leave the TPM only as TPM2B_PRIVATE blobs encrypted under their
 * parent, usable by this TPM alone.
 */
export interface Tpm {
  readonly tcti: string;
  readonly closed: boolean;

  getRandom(bytes: number): Promise<Buffer>;
  capabilities(): Promise<TpmCapabilities>;
  /** Current PCR values of one bank; rejects when the TPM does not return every requested PCR. */
  pcrRead(bank: PcrBank, pcrs: readonly number[]): Promise<Map<number, Buffer>>;

  /** EK certificate (DER) from the TCG standard NV index for that key type, or null if absent. */
  readEkCertificate(kind: EkKind): Promise<Buffer | null>;
  /**
   * Which EK of `kind` this TPM has a certificate for: the first index in the documented order (ECC:
   * 0x01c0000a L-2 P-256, 0x01c00014 H-2 P-256, 0x01c00016 H-3 P-384; RSA: 0x01c00002 L-1), and the
   * template createEk re-derives it from. Null when none of them holds a certificate.
   */
  ekChoice(kind: EkKind): Promise<EkChoice | null>;
  /** Creates (re-derives) the EK from the TCG default template (EK Credential Profile L-1 / L-2). */
  createEk(kind: EkKind): Promise<TpmKey>;
  /**
   * The storage root key (ECC P-256, TCG provisioning template), persisted at `persistentHandle`
   * (default 0x81000001) if no object is there yet. Rejects with TPM_BAD_ARGUMENT if the object at
   * that handle is not an SRK made from our template.
   */
  ensureSrk(opts?: { persistentHandle?: number }): Promise<TpmKey>;
  /** Restricted ECC P-256 signing key (ECDSA-SHA256) under `parent`, for certify and quote. */
  createAttestationKey(parent: TpmKey): Promise<CreatedKey>;
  /** Unrestricted ECC P-256 signing key under `parent`; never decrypt, never duplicable. */
  createIdentityKey(parent: TpmKey): Promise<CreatedKey>;
  /** Loads a key from blobs created earlier under the same parent (in this or an earlier session). */
  loadKey(parent: TpmKey, blobs: KeyBlobs): Promise<TpmKey>;
  /** Releases a transient key (TPM memory) or this context's reference to a persistent one. */
  flush(key: TpmKey): Promise<void>;
  /** Makes a transient key persistent at `handle` (0x81xxxxxx); the transient copy stays loaded. */
  persist(key: TpmKey, handle: number): Promise<TpmKey>;
  /** The persistent object at `handle`, or null. */
  loadPersistent(handle: number): Promise<TpmKey | null>;
  /** Removes the persistent object at `handle`; resolves false when nothing was there. */
  evict(handle: number): Promise<boolean>;

  /**
   * Frees TPM slots held by objects and sessions of connections that no longer exist (a killed process
   * on a TPM without resource manager, such as swtpm). Call before loading anything. Behind a resource
   * manager (/dev/tpmrm0) it finds nothing foreign and does nothing. Resolves how many were flushed.
   */
  reclaimSlots(): Promise<number>;

  /** ECDSA over a precomputed digest (32, 48 or 64 bytes select SHA-256/384/512). */
  sign(key: TpmKey, digest: Buffer): Promise<TpmSignature>;
  /** TPM2_Certify: `ak` attests that `key` is loaded in this TPM; `qualifyingData` ≤ 64 bytes. */
  certify(key: TpmKey, ak: TpmKey, qualifyingData: Buffer): Promise<Attestation>;
  /** TPM2_Quote over PCRs of one bank with `nonce` as qualifying data. */
  quote(ak: TpmKey, selection: { bank: PcrBank; pcrs: readonly number[] }, nonce: Buffer): Promise<Attestation>;
  /**
   * TPM2_ActivateCredential with the EK authorized by PolicySecret(endorsement); returns the secret
   * the fleet sealed with MakeCredential to (EK, Name of `ak`). Fails on any other TPM.
   */
  activateCredential(ak: TpmKey, ek: TpmKey, credentialBlob: Buffer, encryptedSecret: Buffer): Promise<Buffer>;

  /**
   * Options for `tls.connect` (and so mqtt.js) that make OpenSSL sign the handshake with `key` inside
   * the TPM. The key must stay loaded while connections use it; `releaseTlsKey` (or flush) ends that.
   */
  tlsKey(key: TpmKey): TlsKeyOptions;
  releaseTlsKey(options: TlsKeyOptions): void;

  /** Waits for queued operations, then releases the context. Idempotent. */
  close(): Promise<void>;
}

/**
 * What a TPM factory does once per TPM before it leaves the line: store the EK certificate that the
 * manufacturer CA issued. Only TPM factories use this (the simulator's `TpmFactory`, sim/src/factory.ts);
 * the agent and the station never write NV. It is not part of `Tpm`, so code that holds a device's
 * `Tpm` has no way to write NV.
 */
export interface TpmManufacturing {
  /**
   * Defines the TCG low-range EK certificate index of `kind` (EK Credential Profile 2.0 §2.2.1.4:
   * RSA-2048 0x01c00002, ECC P-256 0x01c0000a) under the platform hierarchy, with the attributes TPM
   * vendors use (PPWRITE, WRITEDEFINE, PPREAD, OWNERREAD, AUTHREAD, NO_DA, PLATFORMCREATE, as
   * swtpm_setup does), writes `der` and write-locks the index for good. After it, `readEkCertificate`
   * and `createEk(kind)` (the template of that index: L-1 / L-2) see it, on this context and any other.
   *
   * Preconditions: platform authorization is empty (a TPM after TPM2_Startup before the platform
   * firmware sets it: swtpm, a factory line) and the index is not defined yet. The certificate must
   * certify the EK `createEk(kind)` derives; that is the caller's to ensure (the station checks it).
   * Errors: TPM_BAD_ARGUMENT (not one DER SEQUENCE, or over 4096 bytes), TPM_RC_NV_DEFINED (the index
   * exists), TPM_RC_BAD_AUTH / TPM_RC_HIERARCHY (no platform authorization), TPM_RC_NV_SPACE.
   */
  writeEkCertificate(kind: EkKind, der: Buffer): Promise<void>;
}

export type EkKind = 'rsa' | 'ecc';

/** The EK a TPM's certificate is for (see Tpm.ekChoice). */
export interface EkChoice {
  readonly kind: EkKind;
  /** The NV index holding its certificate. */
  readonly nvIndex: number;
  /** TCG EK Credential Profile template name, e.g. 'H-3 ECC P-384'. */
  readonly template: string;
}
export type PcrBank = 'sha1' | 'sha256' | 'sha384';

/** A loaded TPM object as seen from one context. Plain data; valid until flushed or the context closes. */
export interface TpmKey {
  /** ESYS_TR of the owning context (opaque). */
  readonly handle: number;
  /** Parsed public area. */
  readonly public: TpmPublic;
  /** Marshalled TPM2B_PUBLIC as the TPM returned it. */
  readonly publicArea: Buffer;
  /** TPM Name: nameAlg ‖ H(TPMT_PUBLIC). */
  readonly name: Buffer;
  /** DER SubjectPublicKeyInfo of the public key. */
  readonly spki: Buffer;
  /** Set when the object is persistent. */
  readonly persistentHandle?: number;
}

/** What the agent stores to reload a key later: both blobs as marshalled TPM2B structures. */
export interface KeyBlobs {
  readonly private: Buffer;
  readonly public: Buffer;
}

export interface CreatedKey {
  readonly key: TpmKey;
  readonly blobs: KeyBlobs;
}

export interface TpmSignature {
  /** DER ECDSA-Sig-Value, as X.509/TLS and node:crypto expect. */
  readonly der: Buffer;
  /** r ‖ s, each left-padded to the curve size, as WebCrypto expects. */
  readonly raw: Buffer;
  readonly hash: 'sha256' | 'sha384' | 'sha512';
}

export interface Attestation {
  /** TPMS_ATTEST bytes exactly as signed. */
  readonly attest: Buffer;
  /** Marshalled TPMT_SIGNATURE over H(attest). */
  readonly signature: Buffer;
  readonly parsed: Attest;
}

export interface TpmCapabilities {
  /** Four-character vendor id, e.g. "IBM" for swtpm, "IFX", "STM", "NTC". */
  readonly manufacturer: string;
  readonly vendorString: string;
  /** Firmware version as "major.minor.x.y" from TPM_PT_FIRMWARE_VERSION_1/2. */
  readonly firmwareVersion: string;
  /** Spec revision, e.g. 1.59 → 159. */
  readonly specRevision: number;
  /** Algorithm ids the TPM implements (TPM2_ALG_*). */
  readonly algorithms: readonly number[];
}

export interface TlsKeyOptions {
  readonly privateKeyEngine: string;
  readonly privateKeyIdentifier: string;
}
