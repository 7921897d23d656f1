import { readFile } from 'node:fs/promises';
import { writeFileAtomic } from '../../../common/atomic-file.js';
import type { Clock } from '../../../common/clock.js';
import { isCodedError } from '../../../common/coded-error.js';
import { toPem } from '../../../common/der.js';
import { decodeCrlPart, encodeCrlDelta, encodeCrlParts, sha256Hex } from '../../../common/protocol/crl.js';
import { Topics, isDeviceId } from '../../../common/protocol/topics.js';
import { REVOCATION_REASONS, type CrlResponse, type CrlSigner, type RevocationReason, type RevokedCertificate } from '../ca/crl.js';
import type { IssuedRegistry } from '../ca/issued-registry.js';
import type { Inventory } from '../inventory/inventory.js';
import type { RevocationMetrics } from '../metrics/request-metrics.js';
import type { BrokerEnforcement } from './broker-enforcement.js';
import { RevocationError } from './errors.js';

/**
 * Revocation on the fleet side. One flow for every change: inventory → new CRL number (persisted before
 * it is used) → complete CRL + delta CRL → devices (retained CRL topics) → broker files (CRL + ACL)
 * and reload.
 *   revokeDevice: the inventory marks the device and all its certificates revoked (rotation and
 *     re-attestation refused from then on); the broker refuses the certificates and strips the
 *     device's open session of every right.
 *   revokeSerial: a device certificate revokes its device (the inventory records revocation per device);
 *     any other serial of the issuing CA (service and role certificates, found in the issued registry
 *     when `issuedRegistry` is given) is kept in this service's state and listed in the CRL; a role's
 *     open session is cut too (its CN denied) while the role holds no newer valid certificate.
 *   tick(): a fresh CRL when the current one, or the devices' base, is within `refreshMarginSec` of its
 *     nextUpdate; also retries a failed broker update or publish. `startTimer()` calls it every `tickMs`
 *     (real clock); tests call it after moving a ManualClock.
 * All operations run one at a time, in call order.
 *
 * Devices (common/protocol/crl.ts): every reissue signs the complete CRL (the broker's `crlfile` needs
 * the whole list) and, with the same number, a delta CRL (RFC 5280 5.2.4) against the devices' base,
 * the complete CRL they hold, published retained on `<base>/crl/delta`. The base is renewed (a new
 * complete CRL in parts on `<base>/crl/full/<i>`, the delta topic cleared) when the delta would list
 * more than `deltaMaxEntries` serials or not fit one message, when there is none, and at refresh time
 * (which also drops expired certificates from what devices hold). The base (number, digest, serials,
 * DER) is persisted next to the state file, so a restart keeps the base/delta relation.
 */
export interface RevocationServiceOptions {
  readonly inventory: Inventory;
  readonly crlSigner: CrlSigner;
  readonly clock: Clock;
  /** JSON state (CRL number, revoked non-device serials, the devices' base); written atomically. */
  readonly stateFile: string;
  /** The devices' base CRL (DER and serials), written atomically at each rebase. Default: stateFile with `.base.json`. */
  readonly baseFile?: string;
  readonly enforcement?: BrokerEnforcement;
  /** The CRL topics' layout. Default `new Topics()` (`fleet/v1`). */
  readonly topics?: Topics;
  /**
   * Publishes one message retained, QoS1, on `topic` (the bridge's transport); an empty payload clears
   * the retained message. Failures are retried on the next tick.
   */
  readonly publish?: (topic: string, payload: Buffer) => Promise<void>;
  /**
   * Reads the broker's retained message on `topic` (undefined when there is none). With it, a start or
   * `republish()` checks whether the broker still holds the devices' base before resending it (a bridge
   * restart then costs devices nothing); without it the base is resent.
   */
  readonly readRetained?: (topic: string) => Promise<Buffer | undefined>;
  /** A publish (or read) not answered within this counts as failed (retried on the next tick). Default 5000. */
  readonly publishTimeoutMs?: number;
  /** nextUpdate − thisUpdate. Default 24 h. */
  readonly nextUpdateSec?: number;
  /** Reissue this long before nextUpdate. Default a quarter of nextUpdateSec. */
  readonly refreshMarginSec?: number;
  /** A delta listing more serials than this is replaced by a new base. Default 512. */
  readonly deltaMaxEntries?: number;
  readonly logger?: { info(o: object, m: string): void; warn(o: object, m: string): void };
  /**
   * The CA's registry of role and service certificates (`bridge cert issue`, ca/issued-registry.ts),
   * read on each use. With it, revokeSerial refuses a serial the CA never issued (REVOCATION_NOT_FOUND),
   * and a revoked role certificate's CN is denied everything on the broker (its open session is cut)
   * while the role holds no newer valid certificate; without it any well-formed serial is listed.
   */
  readonly issuedRegistry?: () => Promise<IssuedRegistry>;
  /** Revocations and how long each took to reach devices and the broker. */
  readonly metrics?: RevocationMetrics;
}

export interface RevocationResult {
  readonly serials: readonly string[];
  readonly crlNumber: bigint;
  /** The broker files were written and the broker told to reload. */
  readonly enforced: boolean;
}

/** What devices are sent: the base (complete CRL in parts) and the delta against it. */
export interface DeviceCrlState {
  readonly base: { readonly crlNumber: bigint; readonly sha256: string; readonly thisUpdate: Date; readonly nextUpdate: Date; readonly der: Buffer; readonly size: number };
  /** The delta published now; undefined right after a rebase (the delta topic is cleared). */
  readonly delta: CrlResponse | undefined;
  /** The part payloads, in order, and the delta payload (empty = cleared). */
  readonly partPayloads: readonly Buffer[];
  readonly deltaPayload: Buffer;
  /** Everything devices were sent is on the broker (or the last attempt failed and waits for a tick). */
  readonly published: boolean;
}

interface PersistedState {
  v: 1;
  crlNumber: string;
  /** Revoked serials that are not device certificates; `commonName`/`notAfter` from the issued registry. */
  extra: { serial: string; at: number; reason: RevocationReason; commonName?: string; notAfter?: number }[];
  /** The devices' base; its DER and serials are in the base file. */
  base?: { crlNumber: string; sha256: string; thisUpdate: number; nextUpdate: number };
  /** Part topics the broker may hold (the most a base used): a smaller base clears the rest. */
  partsOnBroker?: number;
}

interface BaseFile {
  v: 1;
  crlNumber: string;
  sha256: string;
  der: string;
  serials: string[];
}

interface DeviceBase {
  readonly crlNumber: bigint;
  readonly sha256: string;
  readonly thisUpdate: number;
  readonly nextUpdate: number;
  readonly der: Buffer;
  readonly serials: ReadonlySet<string>;
  parts?: Buffer[];
}

export const DEFAULT_NEXT_UPDATE_SEC = 86_400;
export const DEFAULT_DELTA_MAX_ENTRIES = 512;
const SERIAL = /^[0-9a-f]{1,40}$/;
const CLEAR = Buffer.alloc(0);

export class RevocationService {
  readonly #o: RevocationServiceOptions;
  readonly #topics: Topics;
  #state: PersistedState | undefined;
  #current: CrlResponse | undefined;
  #base: DeviceBase | undefined;
  #delta: CrlResponse | undefined;
  #deltaPayload: Buffer = CLEAR;
  /** 'unknown': the broker may or may not hold the base (after a start or `republish()`). */
  #baseOut: 'unknown' | 'pending' | 'done' = 'unknown';
  /** Next part to publish while `#baseOut` is 'pending'. */
  #baseNext = 0;
  #deltaOut = false;
  #enforced = false;
  /** The role CNs the broker denies since the last successful enforcement (newline-joined). */
  #appliedRoles = '';
  #queue: Promise<unknown> = Promise.resolve();
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(o: RevocationServiceOptions) {
    this.#o = o;
    this.#topics = o.topics ?? new Topics();
    const max = o.deltaMaxEntries ?? DEFAULT_DELTA_MAX_ENTRIES;
    if (!Number.isSafeInteger(max) || max < 0) throw new RevocationError('REVOCATION_BAD_REQUEST', 'deltaMaxEntries must be a non-negative integer');
  }

  /** The complete CRL in force, as the broker enforces it (after `start()`). */
  get current(): CrlResponse | undefined {
    return this.#current;
  }

  get currentPem(): string | undefined {
    return this.#current && toPem(this.#current.crlDer, 'X509 CRL');
  }

  /** What devices are sent now (after `start()`). */
  get devices(): DeviceCrlState | undefined {
    const b = this.#base;
    if (!b) return undefined;
    return {
      base: { crlNumber: b.crlNumber, sha256: b.sha256, thisUpdate: new Date(b.thisUpdate), nextUpdate: new Date(b.nextUpdate), der: b.der, size: b.serials.size },
      delta: this.#delta,
      partPayloads: this.#parts(b),
      deltaPayload: this.#deltaPayload,
      published: this.#baseOut === 'done' && this.#deltaOut,
    };
  }

  /**
   * Loads the state and issues a CRL (numbered after the last persisted one) from the inventory,
   * enforces it and publishes it. With `publish: false` (no broker connection yet) the first `tick()`
   * publishes it.
   */
  start(opts: { publish?: boolean } = {}): Promise<CrlResponse> {
    return this.#serialize(async () => {
      this.#state = await this.#load();
      this.#base = await this.#loadBase(this.#state);
      this.#baseOut = 'unknown';
      await this.#reissue(opts.publish ?? true, false);
      return this.#current!;
    });
  }

  startTimer(tickMs = 60_000): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => void this.tick().catch(() => undefined), tickMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#queue.catch(() => undefined);
  }

  /** Reissues when due; retries enforcement and publication that failed. Resolves true when it signed a new CRL. */
  tick(): Promise<boolean> {
    return this.#serialize(async () => {
      const cur = this.#current;
      if (!cur) return false;
      const margin = this.#marginMs();
      const now = this.#o.clock.now();
      if (now >= cur.nextUpdate.getTime() - margin || (this.#base !== undefined && now >= this.#base.nextUpdate - margin)) {
        await this.#reissue(true, true);
        return true;
      }
      // A role certificate issued since (`bridge cert issue`) may lift a role's denial: re-apply when the set changed.
      if (!this.#enforced || (this.#o.issuedRegistry && (await this.#rolesChanged()))) await this.#enforce();
      await this.#publish();
      return false;
    });
  }

  /**
   * The broker may have lost retained messages (it restarted, or this bridge is new): checks the base
   * with `readRetained` (or resends it) and resends the delta. Failures wait for the next tick.
   */
  republish(): Promise<void> {
    return this.#serialize(async () => {
      if (this.#baseOut === 'done') this.#baseOut = 'unknown';
      this.#deltaOut = false;
      await this.#publish();
    });
  }

  revokeDevice(deviceId: string, reason: string): Promise<RevocationResult> {
    const requestedAt = this.#o.clock.now();
    return this.#serialize(async () => {
      if (typeof deviceId !== 'string' || !isDeviceId(deviceId)) throw new RevocationError('REVOCATION_BAD_REQUEST', 'invalid device id');
      const r = checkReason(reason);
      let serials: string[];
      try {
        serials = await this.#o.inventory.revokeDevice(deviceId, r, this.#o.clock.now());
      } catch (e) {
        if (isCodedError(e) && e.code === 'INVENTORY_NOT_FOUND') throw new RevocationError('REVOCATION_NOT_FOUND', `unknown device ${deviceId}`);
        throw e;
      }
      this.#o.logger?.info({ deviceId, reason: r, serials }, 'device revoked');
      const out = await this.#reissue(true, false);
      this.#o.metrics?.revoked('device', serials.length, (this.#o.clock.now() - requestedAt) / 1000, out.enforced);
      return { serials, ...out };
    });
  }

  revokeSerial(serial: string, reason: string): Promise<RevocationResult> {
    const s = typeof serial === 'string' ? normalizeSerial(serial) : '';
    if (!SERIAL.test(s) || /^0+$/.test(s)) return Promise.reject(new RevocationError('REVOCATION_BAD_REQUEST', 'invalid serial number'));
    const cert = this.#o.inventory.getCertificate(s);
    if (cert) return this.revokeDevice(cert.deviceId, reason);
    const requestedAt = this.#o.clock.now();
    return this.#serialize(async () => {
      const r = checkReason(reason);
      const state = this.#state ?? (this.#state = await this.#load());
      if (state.extra.some((x) => x.serial === s)) return { serials: [], crlNumber: this.#current?.crlNumber ?? 0n, enforced: this.#enforced };
      let issued: { commonName: string; notAfter: number } | undefined;
      if (this.#o.issuedRegistry) {
        const e = (await this.#o.issuedRegistry()).bySerial(s);
        if (!e) throw new RevocationError('REVOCATION_NOT_FOUND', `no device or role certificate with serial ${s} was issued by this CA`);
        issued = { commonName: e.commonName, notAfter: e.notAfter };
      }
      state.extra.push({ serial: s, at: this.#o.clock.now(), reason: r, ...(issued ?? {}) });
      this.#o.logger?.info({ serial: s, reason: r, ...(issued ? { commonName: issued.commonName } : {}) }, 'serial revoked');
      const out = await this.#reissue(true, false);
      this.#o.metrics?.revoked('serial', 1, (this.#o.clock.now() - requestedAt) / 1000, out.enforced);
      return { serials: [s], ...out };
    });
  }

  /** Revoked devices: the broker denies their ids (with the role CNs of #revokedRoles). */
  #revokedDevices(): string[] {
    return this.#o.inventory
      .listDevices()
      .filter((d) => d.revokedAt !== undefined)
      .map((d) => d.deviceId);
  }

  async #rolesChanged(): Promise<boolean> {
    try {
      return (await this.#revokedRoles()).join('\n') !== this.#appliedRoles;
    } catch (e) {
      this.#o.logger?.warn({ code: (e as { code?: string }).code }, 'cannot read the issued-certificate registry; keeping the broker as it is');
      return false;
    }
  }

  /**
   * The CN of each revoked role certificate while that role holds no newer, unrevoked, unexpired
   * certificate in the registry (the broker's ACL knows CNs, not serials: denying the CN of a renewed
   * role would lock out its new certificate too; the CRL refuses the old one at connect, and the
   * renewed holder takes the session).
   */
  async #revokedRoles(): Promise<string[]> {
    const state = this.#state;
    const read = this.#o.issuedRegistry;
    if (!state || !read) return [];
    const now = this.#o.clock.now();
    const revoked = new Set(state.extra.map((x) => x.serial));
    const candidates = state.extra.filter((x) => x.commonName !== undefined && (x.notAfter ?? 0) > now);
    if (candidates.length === 0) return [];
    const registry = await read();
    const out = new Set<string>();
    for (const x of candidates) {
      const cn = x.commonName!;
      const revokedEntry = registry.bySerial(x.serial);
      const renewed = registry
        .byCommonName(cn)
        .some((e) => !revoked.has(e.serial) && e.notAfter > now && e.issuedAt >= (revokedEntry?.issuedAt ?? Number.MAX_SAFE_INTEGER));
      if (!renewed) out.add(cn);
    }
    return [...out].sort();
  }

  async #reissue(publish: boolean, refresh: boolean): Promise<{ crlNumber: bigint; enforced: boolean }> {
    const state = this.#state ?? (this.#state = await this.#load());
    const now = this.#o.clock.now();
    const revoked: RevokedCertificate[] = [];
    for (const c of this.#o.inventory.listCertificates()) {
      // RFC 5280 3.3: an entry may go once the certificate has expired.
      if (c.revokedAt === undefined || c.notAfter <= now) continue;
      revoked.push({ serialNumber: normalizeSerial(c.serial), revokedAt: new Date(c.revokedAt), reason: asReason(c.revocationReason) });
    }
    const listed = new Set(revoked.map((r) => r.serialNumber));
    for (const x of state.extra) if (!listed.has(x.serial)) revoked.push({ serialNumber: x.serial, revokedAt: new Date(x.at), reason: x.reason });
    const crlNumber = BigInt(state.crlNumber) + 1n;
    // Persist the number before the CRL exists anywhere: a crash never reuses a number.
    state.crlNumber = crlNumber.toString();
    await this.#save(state);
    const nextUpdateSec = this.#nextUpdateSec();
    this.#current = await this.#o.crlSigner.sign({ crlNumber, nextUpdateSec, revoked });
    this.#enforced = false;

    // Devices: a delta against their base, or a new base.
    const base = this.#base;
    let delta: { crl: CrlResponse; payload: Buffer } | undefined;
    if (base && !refresh && now < base.nextUpdate - this.#marginMs()) {
      const changes = revoked.filter((r) => !base.serials.has(r.serialNumber));
      if (changes.length <= (this.#o.deltaMaxEntries ?? DEFAULT_DELTA_MAX_ENTRIES)) {
        const crl = await this.#o.crlSigner.sign({ crlNumber, nextUpdateSec, revoked: changes, baseCrlNumber: base.crlNumber });
        const payload = encodeCrlDelta({ crlNumber, baseCrlNumber: base.crlNumber, thisUpdate: crl.thisUpdate, nextUpdate: crl.nextUpdate, der: crl.crlDer });
        if (payload) delta = { crl, payload };
      }
    }
    if (delta) {
      this.#delta = delta.crl;
      this.#deltaPayload = delta.payload;
    } else {
      await this.#rebase(state, this.#current, revoked);
      this.#delta = undefined;
      this.#deltaPayload = CLEAR;
    }
    this.#deltaOut = false;
    // Published before the broker reloads: a device about to be cut may still learn that it is revoked.
    if (publish) await this.#publish();
    const enforced = await this.#enforce();
    return { crlNumber, enforced };
  }

  /** The complete CRL just signed becomes the devices' base: base file first, then the state naming it. */
  async #rebase(state: PersistedState, crl: CrlResponse, revoked: readonly RevokedCertificate[]): Promise<void> {
    const sha256 = sha256Hex(crl.crlDer);
    const serials = revoked.map((r) => r.serialNumber);
    const file: BaseFile = { v: 1, crlNumber: crl.crlNumber.toString(), sha256, der: crl.crlDer.toString('base64'), serials };
    await writeFileAtomic(this.#baseFile(), JSON.stringify(file), 0o600);
    state.base = { crlNumber: file.crlNumber, sha256, thisUpdate: crl.thisUpdate.getTime(), nextUpdate: crl.nextUpdate.getTime() };
    await this.#save(state);
    this.#base = { crlNumber: crl.crlNumber, sha256, thisUpdate: state.base.thisUpdate, nextUpdate: state.base.nextUpdate, der: crl.crlDer, serials: new Set(serials) };
    this.#baseOut = 'pending';
    this.#baseNext = 0;
    this.#o.logger?.info({ crlNumber: file.crlNumber, serials: serials.length, bytes: crl.crlDer.length }, 'new CRL base for devices');
  }

  #parts(b: DeviceBase): Buffer[] {
    return (b.parts ??= encodeCrlParts({ crlNumber: b.crlNumber, der: b.der }));
  }

  async #enforce(): Promise<boolean> {
    if (!this.#o.enforcement || !this.#current) return (this.#enforced = !this.#o.enforcement);
    try {
      const roles = await this.#revokedRoles();
      await this.#o.enforcement.apply({ crlPem: this.currentPem!, revokedIdentities: [...this.#revokedDevices(), ...roles] });
      this.#appliedRoles = roles.join('\n');
      this.#enforced = true;
    } catch (e) {
      this.#o.logger?.warn({ code: (e as { code?: string }).code }, 'could not update the broker; retrying on the next tick');
    }
    return this.#enforced;
  }

  /** Base parts (resuming where a failure stopped), the clearing of parts a larger base left, then the delta. */
  async #publish(): Promise<void> {
    const publish = this.#o.publish;
    const base = this.#base;
    const state = this.#state;
    if (!publish || !base || !state) return;
    try {
      const parts = this.#parts(base);
      if (this.#baseOut === 'unknown') {
        this.#baseOut = 'pending';
        this.#baseNext = (await this.#brokerHoldsBase(base, parts.length)) ? parts.length : 0;
      }
      if (this.#baseOut === 'pending') {
        if ((state.partsOnBroker ?? 0) < parts.length) {
          state.partsOnBroker = parts.length;
          await this.#save(state);
        }
        for (; this.#baseNext < parts.length; this.#baseNext++) await this.#timed(publish(this.#topics.crlPart(this.#baseNext), parts[this.#baseNext]!));
        // Parts a larger earlier base left: a device must never join them to this base's parts (the
        // digest would catch it, but they would also make a device wait for parts that never come).
        const onBroker = state.partsOnBroker ?? 0;
        for (let i = parts.length; i < onBroker; i++) await this.#timed(publish(this.#topics.crlPart(i), CLEAR));
        if (onBroker !== parts.length) {
          state.partsOnBroker = parts.length;
          await this.#save(state);
        }
        this.#baseOut = 'done';
      }
      if (!this.#deltaOut) {
        await this.#timed(publish(this.#topics.fleet('crlDelta'), this.#deltaPayload));
        this.#deltaOut = true;
      }
    } catch (e) {
      this.#o.logger?.warn({ code: (e as { code?: string }).code }, 'could not publish the CRL to devices; retrying on the next tick');
    }
  }

  /** Parts are published in order, so the last part being this base's means all of them are. */
  async #brokerHoldsBase(base: DeviceBase, parts: number): Promise<boolean> {
    const read = this.#o.readRetained;
    if (!read) return false;
    try {
      const payload = await this.#timed(read(this.#topics.crlPart(parts - 1)));
      if (!payload || payload.length === 0) return false;
      const m = decodeCrlPart(payload);
      return m.crlNumber === base.crlNumber.toString() && m.sha256 === base.sha256 && m.parts === parts;
    } catch {
      return false;
    }
  }

  /** Bounded: a publish on a connection that is going away may never settle, and every revocation waits in the same queue. */
  async #timed<T>(p: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        p,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new RevocationError('REVOCATION_BROKER_FAILED', 'CRL publish timed out')), this.#o.publishTimeoutMs ?? 5_000);
          timer.unref();
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  #nextUpdateSec(): number {
    return this.#o.nextUpdateSec ?? DEFAULT_NEXT_UPDATE_SEC;
  }

  #marginMs(): number {
    return (this.#o.refreshMarginSec ?? Math.floor(this.#nextUpdateSec() / 4)) * 1000;
  }

  #baseFile(): string {
    return this.#o.baseFile ?? this.#o.stateFile.replace(/(\.json)?$/, '.base.json');
  }

  async #load(): Promise<PersistedState> {
    let text: string;
    try {
      text = await readFile(this.#o.stateFile, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { v: 1, crlNumber: '0', extra: [] };
      throw new RevocationError('REVOCATION_STATE_INVALID', `cannot read ${this.#o.stateFile}`, { cause: e });
    }
    try {
      const s = JSON.parse(text) as PersistedState;
      if (s.v !== 1 || !/^\d{1,48}$/.test(s.crlNumber) || !Array.isArray(s.extra)) throw new Error('bad shape');
      for (const x of s.extra) {
        if (!SERIAL.test(x.serial) || !Number.isFinite(x.at) || !REVOCATION_REASONS.includes(x.reason)) throw new Error('bad entry');
        if (x.commonName !== undefined && (typeof x.commonName !== 'string' || !Number.isSafeInteger(x.notAfter))) throw new Error('bad entry');
      }
      if (s.partsOnBroker !== undefined && (!Number.isSafeInteger(s.partsOnBroker) || s.partsOnBroker < 0)) throw new Error('bad partsOnBroker');
      const b = s.base;
      if (b !== undefined) {
        if (typeof b !== 'object' || b === null || !/^\d{1,48}$/.test(b.crlNumber) || !/^[0-9a-f]{64}$/.test(b.sha256)) throw new Error('bad base');
        if (!Number.isSafeInteger(b.thisUpdate) || !Number.isSafeInteger(b.nextUpdate) || BigInt(b.crlNumber) > BigInt(s.crlNumber)) throw new Error('bad base');
      }
      return s;
    } catch (e) {
      throw new RevocationError('REVOCATION_STATE_INVALID', `${this.#o.stateFile} is not a revocation state file`, { cause: e });
    }
  }

  /** The persisted base, or undefined (none yet, or a base file that does not match the state: a new base follows). */
  async #loadBase(state: PersistedState): Promise<DeviceBase | undefined> {
    const b = state.base;
    if (!b) return undefined;
    const lost = (why: string): undefined => {
      this.#o.logger?.warn({ file: this.#baseFile(), why }, 'the devices\' CRL base is unusable; devices get a new one');
      return undefined;
    };
    let f: BaseFile;
    try {
      f = JSON.parse(await readFile(this.#baseFile(), 'utf8')) as BaseFile;
    } catch (e) {
      return lost((e as NodeJS.ErrnoException).code ?? 'not JSON');
    }
    if (typeof f !== 'object' || f === null || f.v !== 1 || f.crlNumber !== b.crlNumber || f.sha256 !== b.sha256 || typeof f.der !== 'string' || !Array.isArray(f.serials)) {
      return lost('does not match the state file');
    }
    const der = Buffer.from(f.der, 'base64');
    if (sha256Hex(der) !== b.sha256) return lost('digest mismatch');
    if (!f.serials.every((s) => typeof s === 'string' && SERIAL.test(s))) return lost('bad serial');
    return { crlNumber: BigInt(b.crlNumber), sha256: b.sha256, thisUpdate: b.thisUpdate, nextUpdate: b.nextUpdate, der, serials: new Set(f.serials) };
  }

  async #save(state: PersistedState): Promise<void> {
    await writeFileAtomic(this.#o.stateFile, JSON.stringify(state), 0o600);
  }

  #serialize<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#stopped) return Promise.reject(new RevocationError('REVOCATION_STOPPED', 'revocation service stopped'));
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }
}

/** Lowercase hex without leading zeros: how serials are compared between the base and the current list. */
function normalizeSerial(s: string): string {
  return s.toLowerCase().replace(/^0+(?=.)/, '');
}

function checkReason(reason: string): RevocationReason {
  if (typeof reason !== 'string' || !REVOCATION_REASONS.includes(reason as RevocationReason)) {
    throw new RevocationError('REVOCATION_BAD_REQUEST', `reason must be one of ${REVOCATION_REASONS.join(', ')}`);
  }
  return reason as RevocationReason;
}

function asReason(r: string | undefined): RevocationReason {
  return r !== undefined && REVOCATION_REASONS.includes(r as RevocationReason) ? (r as RevocationReason) : 'unspecified';
}
