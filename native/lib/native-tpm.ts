import { loadBinding, type RawBinding, type RawContext } from './binding.js';
import { DerError, TAG, readSingle } from '../../common/der.js';
import type { Attestation, CreatedKey, EkChoice, EkKind, KeyBlobs, PcrBank, TlsKeyOptions, Tpm, TpmCapabilities, TpmKey, TpmManufacturing, TpmSignature } from './tpm.js';
import { TpmError, toTpmError } from './tpm-error.js';
import { ekCertificateFromNv } from './ek-nv.js';
import { parseAttest } from './wire/attest.js';
import { TpmWriter } from './wire/buffer-io.js';
import { parseAlgorithms, parseTpmProperties, u32Ascii } from './wire/capability.js';
import { ALG, CAP, EK_CERT_NV, HIERARCHY, PT } from './wire/constants.js';
import { marshalPcrSelection, parseDigestList, parsePcrSelection } from './wire/pcr.js';
import { marshalPublic2b, objectName, parsePublic2b, publicToSpki, type TpmPublic } from './wire/public.js';
import { ecdsaToDer, ecdsaToRaw, parseSignature } from './wire/signature.js';
import {
  attestationKeyTemplate,
  ekEccP256HighTemplate,
  ekEccP384HighTemplate,
  ekEccTemplate,
  ekPolicySession,
  ekRsaTemplate,
  identityKeyTemplate,
  matchesTemplate,
  srkEccTemplate,
} from './wire/templates.js';

export const DEFAULT_SRK_HANDLE = 0x81000001;

/** Where each EK kind's certificate may live, with the template that re-derives its key. */
const EK_SLOTS: Record<EkKind, readonly { nv: number; name: string; template: () => TpmPublic }[]> = {
  rsa: [{ nv: EK_CERT_NV.RSA_2048, name: 'L-1 RSA-2048', template: ekRsaTemplate }],
  ecc: [
    { nv: EK_CERT_NV.ECC_P256, name: 'L-2 ECC P-256', template: ekEccTemplate },
    { nv: EK_CERT_NV.ECC_P256_HIGH, name: 'H-2 ECC P-256', template: ekEccP256HighTemplate },
    { nv: EK_CERT_NV.ECC_P384_HIGH, name: 'H-3 ECC P-384', template: ekEccP384HighTemplate },
  ],
};

/**
 * TPMA_NV of an EK certificate index as TPM vendors (and swtpm_setup) define it: written with platform
 * authorization only, write-lockable for good, readable by platform, owner and anyone (empty auth),
 * no dictionary-attack counting, deletable only by the platform. TPM 2.0 Part 2 §13.4.
 */
const EK_CERT_NV_ATTRIBUTES =
  0x00000001 | // PPWRITE
  0x00002000 | // WRITEDEFINE
  0x00010000 | // PPREAD
  0x00020000 | // OWNERREAD
  0x00040000 | // AUTHREAD
  0x02000000 | // NO_DA
  0x40000000; // PLATFORMCREATE

/** Larger than any EK certificate seen in the field (RSA-2048 with vendor extensions: ~1.5 KB). */
const MAX_EK_CERT_BYTES = 4096;

const PCR_BANK_ALG: Record<PcrBank, number> = { sha1: ALG.SHA1, sha256: ALG.SHA256, sha384: ALG.SHA384 };

/** Response codes that say "not done, ask again" (TPM 2.0 Part 2 §6.6.3 warnings). */
const RETRYABLE: ReadonlySet<string> = new Set(['TPM_RC_RETRY', 'TPM_RC_YIELDED', 'TPM_RC_TESTING']);
/** Pauses before running an operation again once ESAPI's own resubmissions gave up. */
const RETRY_PAUSES_MS = [25, 50, 100, 200, 400] as const;

/** `Tpm` over tpm2-tss ESAPI through the native addon. */
export class NativeTpm implements Tpm, TpmManufacturing {
  readonly tcti: string;
  readonly #raw: RawContext;
  readonly #binding: RawBinding;
  /** Which EK slot holds a certificate, found on first use (swtpm and vendors differ). */
  readonly #ekSlot = new Map<EkKind, { nv: number; name: string; template: () => TpmPublic; cert: Buffer } | null>();

  private constructor(tcti: string, raw: RawContext, binding: RawBinding) {
    this.tcti = tcti;
    this.#raw = raw;
    this.#binding = binding;
  }

  /** Opens a context on the TPM behind `tcti`; rejects TPM_UNREACHABLE when nothing answers there. */
  static async open(tcti: string): Promise<NativeTpm> {
    if (typeof tcti !== 'string' || tcti.length === 0 || tcti.length > 512) {
      throw new TpmError('TPM_BAD_ARGUMENT', 'tcti must be a non-empty string');
    }
    const binding = loadBinding();
    try {
      return new NativeTpm(tcti, await binding.open(tcti), binding);
    } catch (e) {
      const err = toTpmError(e, `open ${tcti}`);
      if (err.layer === 'tcti') throw new TpmError('TPM_UNREACHABLE', err.message, { rc: err.rc, layer: err.layer, cause: e });
      throw err;
    }
  }

  get closed(): boolean {
    return this.#raw.closed;
  }

  /**
   * Runs one addon operation. A TPM that answers RETRY, YIELDED or TESTING did not run the command and
   * asks to be asked again: ESAPI resubmits at once, up to 5 submissions; when it gives up, the
   * operation is run again after RETRY_PAUSES_MS (a chip in self-test needs time, not haste), so at most
   * 30 submissions over about 0.8 s. Nothing else is retried: LOCKOUT, FAILURE and every other code go
   * to the caller at once (retrying a dictionary-attack lockout could only make it worse).
   */
  async #call<T>(operation: string, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (e) {
        const err = toTpmError(e, operation);
        const pause = RETRY_PAUSES_MS[attempt];
        if (pause === undefined || !RETRYABLE.has(err.code) || this.#raw.closed) throw err;
        await new Promise((r) => setTimeout(r, pause));
      }
    }
  }

  #key(handle: number, publicArea: Buffer, name: Buffer, persistentHandle?: number): TpmKey {
    const pub = parsePublic2b(publicArea);
    // The TPM computed `name`; recomputing it guards the parser and the marshalling against drift.
    if (!objectName(pub).equals(name)) throw new TpmError('TPM_BAD_ARGUMENT', 'TPM Name does not match the public area');
    return { handle, public: pub, publicArea, name, spki: publicToSpki(pub), ...(persistentHandle === undefined ? {} : { persistentHandle }) };
  }

  getRandom(bytes: number): Promise<Buffer> {
    if (!Number.isInteger(bytes) || bytes < 1 || bytes > 1024) {
      return Promise.reject(new TpmError('TPM_BAD_ARGUMENT', 'getRandom: bytes must be an integer in 1..1024'));
    }
    return this.#call('getRandom', () => this.#raw.getRandom(bytes));
  }

  async capabilities(): Promise<TpmCapabilities> {
    const props = await this.#call('getCapability(properties)', () => this.#raw.getCapability(CAP.TPM_PROPERTIES, PT.FAMILY_INDICATOR, 64));
    const algs = await this.#call('getCapability(algorithms)', () => this.#raw.getCapability(CAP.ALGS, 0, 256));
    const p = parseTpmProperties(props.data);
    const fw1 = p.get(PT.FIRMWARE_VERSION_1) ?? 0;
    const fw2 = p.get(PT.FIRMWARE_VERSION_2) ?? 0;
    return {
      manufacturer: u32Ascii(p.get(PT.MANUFACTURER) ?? 0),
      vendorString: [PT.VENDOR_STRING_1, PT.VENDOR_STRING_2, PT.VENDOR_STRING_3, PT.VENDOR_STRING_4]
        .map((k) => u32Ascii(p.get(k) ?? 0))
        .join(''),
      firmwareVersion: [fw1 >>> 16, fw1 & 0xffff, fw2 >>> 16, fw2 & 0xffff].join('.'),
      specRevision: p.get(PT.REVISION) ?? 0,
      algorithms: parseAlgorithms(algs.data).map((a) => a.alg),
    };
  }

  async pcrRead(bank: PcrBank, pcrs: readonly number[]): Promise<Map<number, Buffer>> {
    const alg = PCR_BANK_ALG[bank];
    if (alg === undefined) throw new TpmError('TPM_BAD_ARGUMENT', `unknown PCR bank ${String(bank)}`);
    if (pcrs.length === 0 || pcrs.some((p) => !Number.isInteger(p) || p < 0 || p > 23)) {
      throw new TpmError('TPM_BAD_ARGUMENT', 'pcrRead: PCR indices must be integers in 0..23');
    }
    const out = new Map<number, Buffer>();
    // TPM2_PCR_Read returns at most 8 digests per call; ask again for what is still missing.
    for (let round = 0; round < 4 && out.size < new Set(pcrs).size; round++) {
      const wanted = [...new Set(pcrs)].filter((p) => !out.has(p)).sort((a, b) => a - b);
      const res = await this.#call('pcrRead', () => this.#raw.pcrRead(marshalPcrSelection([{ hash: bank, pcrs: wanted }])));
      const got = parsePcrSelection(res.selection).flatMap((s) => (s.hash === bank ? [...s.pcrs].sort((a, b) => a - b) : []));
      const digests = parseDigestList(res.digests);
      if (got.length === 0 || got.length !== digests.length) break;
      got.forEach((pcr, i) => out.set(pcr, digests[i]!));
    }
    if (pcrs.some((p) => !out.has(p))) throw new TpmError('TPM_BAD_ARGUMENT', `pcrRead: the TPM has no ${bank} bank for all requested PCRs`);
    return out;
  }

  async #findEkSlot(kind: EkKind) {
    if (this.#ekSlot.has(kind)) return this.#ekSlot.get(kind)!;
    const slots = EK_SLOTS[kind];
    if (!slots) throw new TpmError('TPM_BAD_ARGUMENT', `unknown EK kind ${String(kind)}`);
    for (const slot of slots) {
      const nv = await this.#call('nvRead(EK certificate)', () => this.#raw.nvRead(slot.nv));
      if (!nv || nv.length === 0) continue;
      // Real chips pad the index or prefix the certificate (ek-nv.ts): only the DER goes on.
      const content = ekCertificateFromNv(nv);
      if (content.kind === 'empty') continue;
      if (content.kind === 'invalid') {
        throw new TpmError('TPM_EK_NV_INVALID', `the EK certificate index 0x${slot.nv.toString(16)} does not hold a certificate: ${content.reason}`);
      }
      const found = { ...slot, cert: content.der };
      this.#ekSlot.set(kind, found);
      return found;
    }
    this.#ekSlot.set(kind, null);
    return null;
  }

  async readEkCertificate(kind: EkKind): Promise<Buffer | null> {
    return (await this.#findEkSlot(kind))?.cert ?? null;
  }

  async ekChoice(kind: EkKind): Promise<EkChoice | null> {
    const slot = await this.#findEkSlot(kind);
    return slot ? { kind, nvIndex: slot.nv, template: slot.name } : null;
  }

  async writeEkCertificate(kind: EkKind, der: Buffer): Promise<void> {
    const slot = EK_SLOTS[kind]?.[0];
    if (!slot) throw new TpmError('TPM_BAD_ARGUMENT', `unknown EK kind ${String(kind)}`);
    if (!Buffer.isBuffer(der) || der.length === 0 || der.length > MAX_EK_CERT_BYTES) {
      throw new TpmError('TPM_BAD_ARGUMENT', `writeEkCertificate: der must be a Buffer of 1..${MAX_EK_CERT_BYTES} bytes`);
    }
    try {
      readSingle(der, TAG.SEQUENCE, 'EK certificate');
    } catch (e) {
      if (!(e instanceof DerError)) throw e;
      throw new TpmError('TPM_BAD_ARGUMENT', `writeEkCertificate: not one DER certificate: ${e.message}`, { cause: e });
    }
    try {
      await this.#call('nvDefineSpace(EK certificate)', () => this.#raw.nvDefineSpace(HIERARCHY.PLATFORM, slot.nv, EK_CERT_NV_ATTRIBUTES, der.length));
      await this.#call('nvWrite(EK certificate)', () => this.#raw.nvWrite(slot.nv, der, true));
    } finally {
      this.#ekSlot.delete(kind); // found again on next use: this index comes first for its kind
    }
  }

  async createEk(kind: EkKind): Promise<TpmKey> {
    const slot = await this.#findEkSlot(kind);
    const template = slot?.template() ?? EK_SLOTS[kind][0]!.template();
    const res = await this.#call('createPrimary(EK)', () => this.#raw.createPrimary(HIERARCHY.ENDORSEMENT, marshalPublic2b(template)));
    return this.#key(res.handle, res.public, res.name);
  }

  async ensureSrk(opts?: { persistentHandle?: number }): Promise<TpmKey> {
    const handle = opts?.persistentHandle ?? DEFAULT_SRK_HANDLE;
    if (!Number.isInteger(handle) || handle >>> 24 !== 0x81) throw new TpmError('TPM_BAD_ARGUMENT', 'SRK handle must be 0x81xxxxxx');
    const existing = await this.loadPersistent(handle);
    if (existing) {
      if (!matchesTemplate(existing.public, srkEccTemplate())) {
        await this.flush(existing);
        throw new TpmError('TPM_BAD_ARGUMENT', `object at 0x${handle.toString(16)} is not an SRK made from the expected template`);
      }
      return existing;
    }
    const created = await this.#call('createPrimary(SRK)', () => this.#raw.createPrimary(HIERARCHY.OWNER, marshalPublic2b(srkEccTemplate())));
    try {
      const persistent = await this.#call('evictControl(SRK)', () => this.#raw.evictControl(created.handle, handle));
      if (persistent === null) throw new TpmError('TPM_BAD_ARGUMENT', 'evictControl returned no persistent handle');
      return this.#key(persistent, created.public, created.name, handle);
    } finally {
      await this.#call('flush(SRK transient)', () => this.#raw.flush(created.handle));
    }
  }

  async #createUnder(parent: TpmKey, template: TpmPublic, what: string): Promise<CreatedKey> {
    const blobs = await this.#call(`create(${what})`, () => this.#raw.create(parent.handle, marshalPublic2b(template)));
    const key = await this.loadKey(parent, blobs);
    return { key, blobs: { private: blobs.private, public: blobs.public } };
  }

  createAttestationKey(parent: TpmKey): Promise<CreatedKey> {
    return this.#createUnder(parent, attestationKeyTemplate(), 'AK');
  }

  createIdentityKey(parent: TpmKey): Promise<CreatedKey> {
    return this.#createUnder(parent, identityKeyTemplate(), 'identity key');
  }

  async loadKey(parent: TpmKey, blobs: KeyBlobs): Promise<TpmKey> {
    if (!Buffer.isBuffer(blobs?.private) || !Buffer.isBuffer(blobs?.public)) {
      throw new TpmError('TPM_BAD_ARGUMENT', 'loadKey: blobs.private and blobs.public must be Buffers');
    }
    const res = await this.#call('load', () => this.#raw.load(parent.handle, blobs.private, blobs.public));
    return this.#key(res.handle, blobs.public, res.name);
  }

  flush(key: TpmKey): Promise<void> {
    return this.#call('flush', () => this.#raw.flush(key.handle));
  }

  async persist(key: TpmKey, handle: number): Promise<TpmKey> {
    if (!Number.isInteger(handle) || handle >>> 24 !== 0x81) throw new TpmError('TPM_BAD_ARGUMENT', 'persistent handles are 0x81xxxxxx');
    const persistent = await this.#call('evictControl(persist)', () => this.#raw.evictControl(key.handle, handle));
    if (persistent === null) throw new TpmError('TPM_BAD_ARGUMENT', 'evictControl returned no persistent handle');
    return { ...key, handle: persistent, persistentHandle: handle };
  }

  async loadPersistent(handle: number): Promise<TpmKey | null> {
    const tr = await this.#call('fromPersistent', () => this.#raw.fromPersistent(handle));
    if (tr === null) return null;
    const pub = await this.#call('readPublic', () => this.#raw.readPublic(tr));
    return this.#key(tr, pub.public, pub.name, handle);
  }

  async evict(handle: number): Promise<boolean> {
    const tr = await this.#call('fromPersistent', () => this.#raw.fromPersistent(handle));
    if (tr === null) return false;
    await this.#call('evictControl(evict)', () => this.#raw.evictControl(tr, handle));
    return true;
  }

  reclaimSlots(): Promise<number> {
    return this.#call('reclaimSlots', () => this.#raw.flushForeign());
  }

  async sign(key: TpmKey, digest: Buffer): Promise<TpmSignature> {
    const hash = ({ 32: 'sha256', 48: 'sha384', 64: 'sha512' } as const)[Buffer.isBuffer(digest) ? digest.length : 0];
    if (!hash) throw new TpmError('TPM_BAD_ARGUMENT', 'sign: digest must be a Buffer of 32, 48 or 64 bytes');
    if (key.public.type !== 'ecc') throw new TpmError('TPM_BAD_ARGUMENT', 'sign: only ECC keys are supported');
    const hashAlg = { sha256: ALG.SHA256, sha384: ALG.SHA384, sha512: ALG.SHA512 }[hash];
    const sig = parseSignature(await this.#call('sign', () => this.#raw.sign(key.handle, digest, hashAlg, ALG.ECDSA)));
    if (sig.sigAlg !== 'ecdsa') throw new TpmError('TPM_BAD_ARGUMENT', 'sign: TPM returned a non-ECDSA signature');
    const size = key.public.x.length || 32;
    return { der: ecdsaToDer(sig.r, sig.s), raw: ecdsaToRaw(sig.r, sig.s, size), hash };
  }

  async certify(key: TpmKey, ak: TpmKey, qualifyingData: Buffer): Promise<Attestation> {
    if (!Buffer.isBuffer(qualifyingData) || qualifyingData.length > 64) {
      throw new TpmError('TPM_BAD_ARGUMENT', 'certify: qualifyingData must be a Buffer of at most 64 bytes');
    }
    const res = await this.#call('certify', () => this.#raw.certify(key.handle, ak.handle, qualifyingData));
    return { attest: res.attest, signature: res.signature, parsed: parseAttest(res.attest) };
  }

  async quote(ak: TpmKey, selection: { bank: PcrBank; pcrs: readonly number[] }, nonce: Buffer): Promise<Attestation> {
    if (!Buffer.isBuffer(nonce) || nonce.length > 64) throw new TpmError('TPM_BAD_ARGUMENT', 'quote: nonce must be a Buffer of at most 64 bytes');
    if (!(selection.bank in PCR_BANK_ALG)) throw new TpmError('TPM_BAD_ARGUMENT', `unknown PCR bank ${String(selection.bank)}`);
    let sel: Buffer;
    try {
      sel = marshalPcrSelection([{ hash: selection.bank, pcrs: selection.pcrs }]);
    } catch (e) {
      throw new TpmError('TPM_BAD_ARGUMENT', `quote: ${(e as Error).message}`, { cause: e });
    }
    const res = await this.#call('quote', () => this.#raw.quote(ak.handle, nonce, sel));
    return { attest: res.attest, signature: res.signature, parsed: parseAttest(res.attest) };
  }

  activateCredential(ak: TpmKey, ek: TpmKey, credentialBlob: Buffer, encryptedSecret: Buffer): Promise<Buffer> {
    if (!Buffer.isBuffer(credentialBlob) || !Buffer.isBuffer(encryptedSecret)) {
      return Promise.reject(new TpmError('TPM_BAD_ARGUMENT', 'activateCredential: credentialBlob and encryptedSecret must be Buffers'));
    }
    const policy = ekPolicySession(ek.public);
    const orList = policy.policyOr ? new TpmWriter().u32(policy.policyOr.length) : undefined;
    for (const d of policy.policyOr ?? []) orList!.tpm2b(d);
    return this.#call('activateCredential', () =>
      this.#raw.activateCredential(ak.handle, ek.handle, credentialBlob, encryptedSecret, policy.sessionHashAlg, orList?.finish()),
    );
  }

  tlsKey(key: TpmKey): TlsKeyOptions {
    try {
      const id = this.#raw.registerTlsKey(key.handle, key.publicArea);
      return { privateKeyEngine: this.#binding.engineId, privateKeyIdentifier: id };
    } catch (e) {
      throw toTpmError(e, 'tlsKey');
    }
  }

  releaseTlsKey(options: TlsKeyOptions): void {
    this.#raw.unregisterTlsKey(options.privateKeyIdentifier);
  }

  close(): Promise<void> {
    return this.#call('close', () => this.#raw.close());
  }
}
