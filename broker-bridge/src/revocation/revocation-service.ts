import { readFile } from 'node:fs/promises';
import type { Clock } from '../../../common/clock.js';
import { isCodedError } from '../../../common/coded-error.js';
import { toPem } from '../../../common/der.js';
import { isDeviceId } from '../../../common/protocol/topics.js';
import { REVOCATION_REASONS, type CrlResponse, type CrlSigner, type RevocationReason, type RevokedCertificate } from '../ca/crl.js';
import type { Inventory } from '../inventory/inventory.js';
import { writeFileAtomic } from './atomic-file.js';
import type { BrokerEnforcement } from './broker-enforcement.js';
import { RevocationError } from './errors.js';

/**
 * Revocation on the fleet side. One flow for every change: inventory → new CRL (number + 1, persisted
 * before it is used) → broker files (CRL + ACL) and reload → CRL published retained for devices.
 *   revokeDevice: the inventory marks the device and all its certificates revoked (rotation and
 *     re-attestation refused from then on); the broker refuses the certificates and strips the
 *     device's open session of every right.
 *   revokeSerial: a device certificate revokes its device (the inventory records revocation per device);
 *     any other serial of the issuing CA (service and role certificates) is kept in this service's state
 *     and listed in the CRL (new connections refused; an open session of a role is not cut).
 *   tick(): a fresh CRL when the current one is within `refreshMarginSec` of its nextUpdate; also
 *     retries a failed broker update or publish. `startTimer()` calls it every `tickMs` (real clock);
 *     tests call it after moving a ManualClock.
 * All operations run one at a time, in call order.
 */
export interface RevocationServiceOptions {
  readonly inventory: Inventory;
  readonly crlSigner: CrlSigner;
  readonly clock: Clock;
  /** JSON state (CRL number, revoked non-device serials); written atomically. */
  readonly stateFile: string;
  readonly enforcement?: BrokerEnforcement;
  /** Publishes the CRL message retained (the bridge's transport). Failures are retried on the next tick. */
  readonly publish?: (payload: Buffer) => Promise<void>;
  /** A publish not acknowledged within this counts as failed (retried on the next tick). Default 5000. */
  readonly publishTimeoutMs?: number;
  /** nextUpdate − thisUpdate. Default 24 h. */
  readonly nextUpdateSec?: number;
  /** Reissue this long before nextUpdate. Default a quarter of nextUpdateSec. */
  readonly refreshMarginSec?: number;
  readonly logger?: { info(o: object, m: string): void; warn(o: object, m: string): void };
}

export interface RevocationResult {
  readonly serials: readonly string[];
  readonly crlNumber: bigint;
  /** The broker files were written and the broker told to reload. */
  readonly enforced: boolean;
}

interface PersistedState {
  v: 1;
  crlNumber: string;
  extra: { serial: string; at: number; reason: RevocationReason }[];
}

export const DEFAULT_NEXT_UPDATE_SEC = 86_400;
const SERIAL = /^[0-9a-f]{1,40}$/;

export class RevocationService {
  readonly #o: RevocationServiceOptions;
  #state: PersistedState | undefined;
  #current: CrlResponse | undefined;
  #enforced = false;
  #published = false;
  #queue: Promise<unknown> = Promise.resolve();
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(o: RevocationServiceOptions) {
    this.#o = o;
  }

  /** The CRL in force (after `start()`). */
  get current(): CrlResponse | undefined {
    return this.#current;
  }

  get currentPem(): string | undefined {
    return this.#current && toPem(this.#current.crlDer, 'X509 CRL');
  }

  /**
   * Loads the state and issues a CRL (numbered after the last persisted one) from the inventory,
   * enforces it and publishes it. With `publish: false` (no broker connection yet) the first `tick()`
   * publishes it.
   */
  start(opts: { publish?: boolean } = {}): Promise<CrlResponse> {
    return this.#serialize(async () => {
      this.#state = await this.#load();
      await this.#reissue(opts.publish ?? true);
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
      const margin = (this.#o.refreshMarginSec ?? Math.floor(this.#nextUpdateSec() / 4)) * 1000;
      if (this.#o.clock.now() >= cur.nextUpdate.getTime() - margin) {
        await this.#reissue();
        return true;
      }
      if (!this.#enforced) await this.#enforce();
      if (!this.#published) await this.#publish();
      return false;
    });
  }

  revokeDevice(deviceId: string, reason: string): Promise<RevocationResult> {
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
      return { serials, ...(await this.#reissue()) };
    });
  }

  revokeSerial(serial: string, reason: string): Promise<RevocationResult> {
    const s = typeof serial === 'string' ? serial.toLowerCase().replace(/^0+(?=.)/, '') : '';
    if (!SERIAL.test(s) || /^0+$/.test(s)) return Promise.reject(new RevocationError('REVOCATION_BAD_REQUEST', 'invalid serial number'));
    const cert = this.#o.inventory.getCertificate(s);
    if (cert) return this.revokeDevice(cert.deviceId, reason);
    return this.#serialize(async () => {
      const r = checkReason(reason);
      const state = this.#state ?? (this.#state = await this.#load());
      if (state.extra.some((x) => x.serial === s)) return { serials: [], crlNumber: this.#current?.crlNumber ?? 0n, enforced: this.#enforced };
      state.extra.push({ serial: s, at: this.#o.clock.now(), reason: r });
      this.#o.logger?.info({ serial: s, reason: r }, 'serial revoked');
      return { serials: [s], ...(await this.#reissue()) };
    });
  }

  /** Every revoked identity the broker must deny (device ids). */
  revokedIdentities(): string[] {
    return this.#o.inventory
      .listDevices()
      .filter((d) => d.revokedAt !== undefined)
      .map((d) => d.deviceId);
  }

  /** The CRL message devices receive (retained). Proposed schema: see README "Revocation". */
  static message(crl: CrlResponse): Buffer {
    return Buffer.from(
      JSON.stringify({
        v: 1,
        crlNumber: crl.crlNumber.toString(),
        thisUpdate: crl.thisUpdate.getTime(),
        nextUpdate: crl.nextUpdate.getTime(),
        crl: crl.crlDer.toString('base64'),
      }),
    );
  }

  async #reissue(publish = true): Promise<{ crlNumber: bigint; enforced: boolean }> {
    const state = this.#state ?? (this.#state = await this.#load());
    const now = this.#o.clock.now();
    const revoked: RevokedCertificate[] = [];
    for (const c of this.#o.inventory.listCertificates()) {
      // RFC 5280 3.3: an entry may go once the certificate has expired.
      if (c.revokedAt === undefined || c.notAfter <= now) continue;
      revoked.push({ serialNumber: c.serial, revokedAt: new Date(c.revokedAt), reason: asReason(c.revocationReason) });
    }
    const listed = new Set(revoked.map((r) => r.serialNumber));
    for (const x of state.extra) if (!listed.has(x.serial)) revoked.push({ serialNumber: x.serial, revokedAt: new Date(x.at), reason: x.reason });
    const crlNumber = BigInt(state.crlNumber) + 1n;
    // Persist the number before the CRL exists anywhere: a crash never reuses a number.
    state.crlNumber = crlNumber.toString();
    await this.#save(state);
    this.#current = await this.#o.crlSigner.sign({ crlNumber, nextUpdateSec: this.#nextUpdateSec(), revoked });
    this.#enforced = false;
    this.#published = false;
    // Published before the broker reloads: a device about to be cut may still learn that it is revoked.
    if (publish) await this.#publish();
    const enforced = await this.#enforce();
    return { crlNumber, enforced };
  }

  async #enforce(): Promise<boolean> {
    if (!this.#o.enforcement || !this.#current) return (this.#enforced = !this.#o.enforcement);
    try {
      await this.#o.enforcement.apply({ crlPem: this.currentPem!, revokedIdentities: this.revokedIdentities() });
      this.#enforced = true;
    } catch (e) {
      this.#o.logger?.warn({ code: (e as { code?: string }).code }, 'could not update the broker; retrying on the next tick');
    }
    return this.#enforced;
  }

  async #publish(): Promise<void> {
    if (!this.#o.publish || !this.#current) return;
    let timer: NodeJS.Timeout | undefined;
    try {
      // Bounded: a publish on a connection that is going away may never settle, and every revocation
      // waits in the same queue.
      await Promise.race([
        this.#o.publish(RevocationService.message(this.#current)),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new RevocationError('REVOCATION_BROKER_FAILED', 'CRL publish timed out')), this.#o.publishTimeoutMs ?? 5_000);
          timer.unref();
        }),
      ]);
      this.#published = true;
    } catch (e) {
      this.#o.logger?.warn({ code: (e as { code?: string }).code }, 'could not publish the CRL; retrying on the next tick');
    } finally {
      clearTimeout(timer);
    }
  }

  #nextUpdateSec(): number {
    return this.#o.nextUpdateSec ?? DEFAULT_NEXT_UPDATE_SEC;
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
      }
      return s;
    } catch (e) {
      throw new RevocationError('REVOCATION_STATE_INVALID', `${this.#o.stateFile} is not a revocation state file`, { cause: e });
    }
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

function checkReason(reason: string): RevocationReason {
  if (typeof reason !== 'string' || !REVOCATION_REASONS.includes(reason as RevocationReason)) {
    throw new RevocationError('REVOCATION_BAD_REQUEST', `reason must be one of ${REVOCATION_REASONS.join(', ')}`);
  }
  return reason as RevocationReason;
}

function asReason(r: string | undefined): RevocationReason {
  return r !== undefined && REVOCATION_REASONS.includes(r as RevocationReason) ? (r as RevocationReason) : 'unspecified';
}
