import { Level } from 'level';
import { isLevelLocked } from '../../../common/level-lock.js';
import { SECURITY_EVENTS, type EventType } from '../../../common/protocol/messages.js';
import type { CampaignDeviceRecord, CampaignRecord } from '../campaign/campaign.js';
import {
  DEVICE_EVENT_HISTORY,
  InventoryError,
  RESPONSES_PER_DEVICE,
  type AuditEvent,
  type AuditEventInput,
  type CachedResponse,
  type CampaignStore,
  type CertificateRecord,
  type CompleteEnrollment,
  type CompleteReattestation,
  type CompleteRotation,
  type DeviceEventRecord,
  type DeviceEventRecordInput,
  type DeviceRecord,
  type DeviceRegistration,
  type DeviceStatusSnapshot,
  type Inventory,
  type TokenRecord,
  sameEkEvidence,
} from './inventory.js';

type Sub<V> = ReturnType<Level<string, unknown>['sublevel']> & { get(key: string): Promise<V | undefined> };
type Op = { type: 'put'; sublevel: never; key: string; value: unknown } | { type: 'del'; sublevel: never; key: string };

/** Per-device event bookkeeping kept in memory: the dedupe window and the next arrival number. */
interface EventIndex {
  next: number;
  /** event id → arrival number, for the events still in the history. */
  readonly ids: Map<string, number>;
  /** [arrival number, event id], oldest first: what to prune. */
  readonly order: [number, string][];
}

/** Keys are `<deviceId>\x00<…>`: device ids never contain NUL, so a device's keys form one range. */
const SEP = '\x00';
const pad = (n: number) => String(n).padStart(16, '0');
const responseKey = (deviceId: string, requestId: string) => `${deviceId}${SEP}${requestId}`;

/**
 * LevelDB inventory with a hot in-memory index: every record is loaded at open and reads never touch
 * the disk (a level get costs ~180 µs, too slow per message). Writes go to LevelDB first, in one batch
 * per logical change, and only then to the index, so a crash never leaves the index ahead of the disk.
 * Writers are serialized in-process; one bridge process owns one LevelDB directory (LevelDB's lock
 * enforces it). Horizontal scaling swaps this class for a PostgreSQL one.
 *
 * Exceptions to "everything in memory": device event bodies and audit events stay on disk (only the
 * per-device dedupe window of event ids is in memory); both are read by operator queries only.
 */
export class LevelInventory implements Inventory, CampaignStore {
  readonly #db: Level<string, unknown>;
  readonly #devicesDb: Sub<DeviceRecord>;
  readonly #tokensDb: Sub<TokenRecord>;
  readonly #certsDb: Sub<CertificateRecord>;
  readonly #responsesDb: Sub<CachedResponse>;
  readonly #auditDb: Sub<AuditEvent>;
  readonly #eventsDb: Sub<DeviceEventRecord>;
  readonly #eventIdsDb: Sub<number>;
  readonly #campaignsDb: Sub<CampaignRecord>;
  readonly #campaignDevicesDb: Sub<CampaignDeviceRecord>;
  readonly #campaigns = new Map<string, CampaignRecord>();
  /** campaign id → device id → record. */
  readonly #campaignDevices = new Map<string, Map<string, CampaignDeviceRecord>>();
  readonly #devices = new Map<string, DeviceRecord>();
  readonly #tokens = new Map<string, TokenRecord>();
  readonly #certs = new Map<string, CertificateRecord>();
  readonly #certsByDevice = new Map<string, Set<string>>();
  /** `<deviceId>\x00<requestId>` → response. */
  readonly #responses = new Map<string, CachedResponse>();
  /** deviceId → its response keys, oldest first (for pruning). */
  readonly #responseKeys = new Map<string, string[]>();
  readonly #events = new Map<string, EventIndex>();
  #auditSeq = 0;
  #writeChain: Promise<unknown> = Promise.resolve();
  #open = false;

  readonly #path: string;
  constructor(path: string) {
    this.#path = path;
    this.#db = new Level<string, unknown>(path, { valueEncoding: 'json' });
    const sub = <V>(name: string) => this.#db.sublevel<string, V>(name, { valueEncoding: 'json' }) as unknown as Sub<V>;
    this.#devicesDb = sub('devices');
    this.#tokensDb = sub('tokens');
    this.#certsDb = sub('certs');
    // Keyed `<deviceId>\x00<requestId>` since responses became per requester; earlier records keyed by
    // requestId alone sit in the old 'responses' sublevel, which nothing reads any more.
    this.#responsesDb = sub('device-responses');
    this.#auditDb = sub('audit');
    this.#eventsDb = sub('events');
    this.#eventIdsDb = sub('event-ids');
    this.#campaignsDb = sub('campaigns');
    // Keyed `<campaignId>\x00<deviceId>`.
    this.#campaignDevicesDb = sub('campaign-devices');
  }

  async open(): Promise<void> {
    if (this.#open) return;
    try {
      await this.#db.open();
    } catch (e) {
      if (!isLevelLocked(e)) throw e;
      throw new InventoryError(
        'INVENTORY_LOCKED',
        `the inventory ${this.#path} is in use by another process (a running bridge or station holds its LevelDB lock); stop it, or register devices through it`,
        { cause: e },
      );
    }
    await this.#load(this.#devicesDb, this.#devices);
    await this.#load(this.#tokensDb, this.#tokens);
    await this.#load(this.#certsDb, this.#certs);
    for (const c of this.#certs.values()) this.#indexCert(c);
    await this.#load(this.#responsesDb, this.#responses);
    const byAge = [...this.#responses.entries()].sort((x, y) => x[1].storedAt - y[1].storedAt);
    for (const [key, r] of byAge) this.#responseKeysOf(r.requester ?? r.deviceId).push(key);
    for await (const [key, arrival] of this.#eventIdsDb.iterator() as AsyncIterable<[string, number]>) {
      const sep = key.indexOf(SEP);
      const idx = this.#eventIndexOf(key.slice(0, sep));
      idx.ids.set(key.slice(sep + 1), arrival);
      idx.order.push([arrival, key.slice(sep + 1)]);
      idx.next = Math.max(idx.next, arrival + 1);
    }
    for (const idx of this.#events.values()) idx.order.sort((x, y) => x[0] - y[0]);
    for await (const key of this.#auditDb.keys({ reverse: true, limit: 1 })) this.#auditSeq = Number(key);
    await this.#load(this.#campaignsDb, this.#campaigns);
    for await (const [, d] of this.#campaignDevicesDb.iterator() as AsyncIterable<[string, CampaignDeviceRecord]>) this.#campaignDevicesOf(d.campaignId).set(d.deviceId, d);
    this.#open = true;
  }

  async #load<V>(db: Sub<V>, into: Map<string, V>): Promise<void> {
    for await (const [k, v] of db.iterator() as AsyncIterable<[string, V]>) into.set(k, v);
  }

  async close(): Promise<void> {
    if (!this.#open) return;
    await this.#writeChain.catch(() => undefined);
    this.#open = false;
    await this.#db.close();
  }

  #assertOpen(): void {
    if (!this.#open) throw new InventoryError('INVENTORY_CLOSED', 'inventory is not open');
  }

  /** Runs writers one at a time so check-then-write sequences are atomic within this process. */
  #serialize<T>(fn: () => Promise<T>): Promise<T> {
    if (!this.#open) return Promise.reject(new InventoryError('INVENTORY_CLOSED', 'inventory is not open'));
    const run = this.#writeChain.then(fn, fn);
    this.#writeChain = run.catch(() => undefined);
    return run;
  }

  registerDevice(device: DeviceRegistration, token?: TokenRecord): Promise<void> {
    return this.#serialize(async () => {
      const existing = this.#devices.get(device.deviceId);
      if (existing && existing.ekPublicHash !== device.ekPublicHash) {
        throw new InventoryError('INVENTORY_CONFLICT', `device ${device.deviceId} is registered with another EK`);
      }
      if (token && (token.deviceId !== device.deviceId || token.ekPublicHash !== device.ekPublicHash)) {
        throw new InventoryError('INVENTORY_CONFLICT', 'token is not bound to this device and EK');
      }
      const sameToken = !token || JSON.stringify(this.#tokens.get(token.tokenHash)) === JSON.stringify(token);
      if (existing && sameToken && JSON.stringify(existing.metadata) === JSON.stringify(device.metadata) && sameEkEvidence(existing, device)) {
        return; // already registered exactly like this: nothing to write, not even an audit event
      }
      // The new registration's EK evidence replaces the old one whole (a certificate, or the factory policy).
      const record: DeviceRecord = existing ? { ...withoutEkEvidence(existing), ...device, registeredAt: existing.registeredAt } : device;
      const ops: Op[] = [this.#put(this.#devicesDb, device.deviceId, record)];
      // A device has at most one live token: a new one (a re-provisioned device) supersedes the rest.
      const superseded = token
        ? [...this.#tokens.values()].filter((t) => t.deviceId === device.deviceId && t.usedAt === undefined && t.tokenHash !== token.tokenHash)
        : [];
      if (token) ops.push(this.#put(this.#tokensDb, token.tokenHash, token));
      for (const t of superseded) ops.push(this.#del(this.#tokensDb, t.tokenHash));
      const audit = this.#auditOps([
        { at: device.registeredAt, type: existing ? 'device.reregistered' : 'device.registered', deviceId: device.deviceId },
      ]);
      await this.#db.batch([...ops, ...audit.ops] as never);
      this.#devices.set(device.deviceId, record);
      for (const t of superseded) this.#tokens.delete(t.tokenHash);
      if (token) this.#tokens.set(token.tokenHash, token);
      this.#auditSeq = audit.lastSeq;
    });
  }

  getDevice(deviceId: string): DeviceRecord | undefined {
    return this.#devices.get(deviceId);
  }

  listDevices(): DeviceRecord[] {
    return [...this.#devices.values()];
  }

  getToken(tokenHash: string): TokenRecord | undefined {
    return this.#tokens.get(tokenHash);
  }

  completeEnrollment(input: CompleteEnrollment): Promise<void> {
    return this.#serialize(async () => {
      const token = this.#tokens.get(input.tokenHash);
      if (!token) throw new InventoryError('INVENTORY_NOT_FOUND', 'token not found');
      if (token.usedAt !== undefined) throw new InventoryError('INVENTORY_TOKEN_USED', 'token already used');
      const device = this.#devices.get(input.deviceId);
      if (!device) throw new InventoryError('INVENTORY_NOT_FOUND', `device ${input.deviceId} not registered`);
      this.#assertNewCertificate(input.deviceId, input.certificate, input.response);
      const usedToken: TokenRecord = { ...token, usedAt: input.at, usedByRequestId: input.requestId };
      const enrolled: DeviceRecord = {
        ...device,
        enrolledAt: input.at,
        akName: input.akName,
        certSerial: input.certificate.serial,
        certNotAfter: input.certificate.notAfter,
      };
      const certificate: CertificateRecord = { ...input.certificate, kind: 'enroll' };
      const response = this.#responseOps(input.response);
      const audit = this.#auditOps(input.audit);
      await this.#db.batch([
        this.#put(this.#tokensDb, usedToken.tokenHash, usedToken),
        this.#put(this.#devicesDb, enrolled.deviceId, enrolled),
        this.#put(this.#certsDb, certificate.serial, certificate),
        ...response.ops,
        ...audit.ops,
      ] as never);
      this.#tokens.set(usedToken.tokenHash, usedToken);
      this.#devices.set(enrolled.deviceId, enrolled);
      this.#setCert(certificate);
      response.apply();
      this.#auditSeq = audit.lastSeq;
    });
  }

  getCertificate(serial: string): CertificateRecord | undefined {
    return this.#certs.get(serial);
  }

  listCertificates(deviceId?: string): CertificateRecord[] {
    if (deviceId === undefined) return [...this.#certs.values()];
    return [...(this.#certsByDevice.get(deviceId) ?? [])].map((s) => this.#certs.get(s)!);
  }

  getResponse(deviceId: string, requestId: string): CachedResponse | undefined {
    return this.#responses.get(responseKey(deviceId, requestId));
  }

  putResponse(response: CachedResponse): Promise<void> {
    return this.#serialize(async () => {
      const r = this.#responseOps(response);
      await this.#db.batch(r.ops as never);
      r.apply();
    });
  }

  completeRotation(input: CompleteRotation): Promise<void> {
    return this.#serialize(async () => {
      const device = this.#activeDevice(input.deviceId);
      this.#assertNewCertificate(input.deviceId, input.certificate, input.response);
      // Rotation certificates the device never confirmed were abandoned (rolled back, or the device
      // died before confirming): retire them now so at most the in-use and the new one stay active.
      const abandoned = this.listCertificates(input.deviceId).filter(
        (c) => c.kind === 'rotate' && c.confirmedAt === undefined && isActive(c) && c.serial !== input.previousSerial,
      );
      const retired = abandoned.map((c): CertificateRecord => ({ ...c, supersededAt: input.at }));
      const certificate: CertificateRecord = { ...input.certificate, kind: 'rotate' };
      const updated: DeviceRecord = {
        ...device,
        certSerial: certificate.serial,
        certNotAfter: certificate.notAfter,
        lastRotationAt: input.at,
      };
      await this.#recordIssued(certificate, retired, updated, input.response, [...input.audit, ...retired.map((c) => supersededAudit(c, input.at, 'abandoned'))]);
    });
  }

  /**
   * One batch for a certificate issued outside enrollment (rotation, re-attestation): the new
   * certificate, the ones it retires, the device, the cached response and the audit events; the index
   * follows only after the batch is written.
   */
  async #recordIssued(certificate: CertificateRecord, retired: readonly CertificateRecord[], updated: DeviceRecord, cached: CachedResponse, events: readonly AuditEventInput[]): Promise<void> {
    const response = this.#responseOps(cached);
    const audit = this.#auditOps(events);
    await this.#db.batch([
      this.#put(this.#certsDb, certificate.serial, certificate),
      ...retired.map((c) => this.#put(this.#certsDb, c.serial, c)),
      this.#put(this.#devicesDb, updated.deviceId, updated),
      ...response.ops,
      ...audit.ops,
    ] as never);
    this.#setCert(certificate);
    for (const c of retired) this.#setCert(c);
    this.#devices.set(updated.deviceId, updated);
    response.apply();
    this.#auditSeq = audit.lastSeq;
  }

  confirmRotation(deviceId: string, serial: string, at: number): Promise<string[]> {
    return this.#serialize(async () => {
      const device = this.#devices.get(deviceId);
      const cert = this.#certs.get(serial);
      if (!device || !cert || cert.deviceId !== deviceId) {
        throw new InventoryError('INVENTORY_NOT_FOUND', `${serial} is not a certificate of ${deviceId}`);
      }
      if (device.revokedAt !== undefined || cert.revokedAt !== undefined) throw new InventoryError('INVENTORY_REVOKED', `${serial} is revoked`);
      if (cert.supersededAt !== undefined) throw new InventoryError('INVENTORY_CONFLICT', `${serial} was superseded`);
      const others = this.listCertificates(deviceId).filter((c) => c.serial !== serial && isActive(c));
      if (others.length === 0 && cert.confirmedAt !== undefined && device.certSerial === serial) return [];
      const confirmed: CertificateRecord = cert.confirmedAt === undefined ? { ...cert, confirmedAt: at } : cert;
      const retired = others.map((c): CertificateRecord => ({ ...c, supersededAt: at }));
      const updated: DeviceRecord = { ...device, certSerial: serial, certNotAfter: cert.notAfter };
      const audit = this.#auditOps([
        { at, type: 'rotation.confirmed', deviceId, details: { serial, superseded: retired.map((c) => c.serial).join(',') } },
        ...retired.map((c) => supersededAudit(c, at, 'confirmed-newer')),
      ]);
      await this.#db.batch([
        this.#put(this.#certsDb, serial, confirmed),
        ...retired.map((c) => this.#put(this.#certsDb, c.serial, c)),
        this.#put(this.#devicesDb, deviceId, updated),
        ...audit.ops,
      ] as never);
      this.#setCert(confirmed);
      for (const c of retired) this.#setCert(c);
      this.#devices.set(deviceId, updated);
      this.#auditSeq = audit.lastSeq;
      return retired.map((c) => c.serial);
    });
  }

  completeReattestation(input: CompleteReattestation): Promise<void> {
    return this.#serialize(async () => {
      const device = this.#activeDevice(input.deviceId);
      this.#assertNewCertificate(input.deviceId, input.certificate, input.response);
      const retired = this.listCertificates(input.deviceId)
        .filter(isActive)
        .map((c): CertificateRecord => ({ ...c, supersededAt: input.at }));
      const certificate: CertificateRecord = { ...input.certificate, kind: 'reattest' };
      const updated: DeviceRecord = {
        ...device,
        certSerial: certificate.serial,
        certNotAfter: certificate.notAfter,
        reattestedAt: input.at,
      };
      await this.#recordIssued(certificate, retired, updated, input.response, [...input.audit, ...retired.map((c) => supersededAudit(c, input.at, 'reattested'))]);
    });
  }

  revokeDevice(deviceId: string, reason: string, at: number): Promise<string[]> {
    return this.#serialize(async () => {
      const device = this.#devices.get(deviceId);
      if (!device) throw new InventoryError('INVENTORY_NOT_FOUND', `device ${deviceId} not registered`);
      const revoked = this.listCertificates(deviceId)
        .filter((c) => c.revokedAt === undefined)
        .map((c): CertificateRecord => ({ ...c, revokedAt: at, revocationReason: reason }));
      if (device.revokedAt !== undefined && revoked.length === 0) return [];
      // Offline from now on: the broker takes every right from its session, last will included.
      const updated: DeviceRecord = device.revokedAt === undefined ? { ...device, revokedAt: at, revocationReason: reason, online: false } : device;
      const audit = this.#auditOps([
        { at, type: 'device.revoked', deviceId, details: { reason, serials: revoked.map((c) => c.serial).join(',') } },
      ]);
      await this.#db.batch([
        this.#put(this.#devicesDb, deviceId, updated),
        ...revoked.map((c) => this.#put(this.#certsDb, c.serial, c)),
        ...audit.ops,
      ] as never);
      this.#devices.set(deviceId, updated);
      for (const c of revoked) this.#setCert(c);
      this.#auditSeq = audit.lastSeq;
      return revoked.map((c) => c.serial);
    });
  }

  recordStatus(deviceId: string, status: DeviceStatusSnapshot, at: number): Promise<void> {
    return this.#serialize(async () => {
      const device = this.#devices.get(deviceId);
      if (!device) throw new InventoryError('INVENTORY_NOT_FOUND', `device ${deviceId} not registered`);
      // A retained offline status redelivered (bridge restart, resubscribe) carries no news.
      const redelivered = !status.online && device.online === false && JSON.stringify(device.status) === JSON.stringify(status);
      if (redelivered) return;
      const seen = status.online || device.online === true;
      // A revoked device's last words are kept, but it is never online again: the broker refuses it.
      const online = status.online && device.revokedAt === undefined;
      const updated: DeviceRecord = { ...device, status, online, ...(seen ? { lastSeenAt: at } : {}) };
      await this.#devicesDb.put(deviceId, updated as never);
      this.#devices.set(deviceId, updated);
    });
  }

  recordEvents(deviceId: string, events: readonly DeviceEventRecordInput[], at: number): Promise<DeviceEventRecord[]> {
    return this.#serialize(async () => {
      const device = this.#devices.get(deviceId);
      if (!device) throw new InventoryError('INVENTORY_NOT_FOUND', `device ${deviceId} not registered`);
      const idx = this.#events.get(deviceId);
      let next = idx?.next ?? 1;
      const fresh: { arrival: number; record: DeviceEventRecord }[] = [];
      const seen = new Set<string>();
      for (const e of events) {
        if (idx?.ids.has(e.id) || seen.has(e.id)) continue;
        seen.add(e.id);
        fresh.push({ arrival: next++, record: { ...e, deviceId, receivedAt: at } });
      }
      // Keep the newest DEVICE_EVENT_HISTORY, pruning the oldest in the same write (a batch larger than
      // the history itself keeps only its own newest).
      const old = idx?.order ?? [];
      const excess = Math.max(0, old.length + fresh.length - DEVICE_EVENT_HISTORY);
      const pruned = old.slice(0, Math.min(excess, old.length));
      const kept = fresh.slice(excess - pruned.length);
      const updated: DeviceRecord = { ...device, lastSeenAt: at };
      const ops: Op[] = [this.#put(this.#devicesDb, deviceId, updated)];
      for (const [arrival, id] of pruned) {
        ops.push(this.#del(this.#eventsDb, `${deviceId}${SEP}${pad(arrival)}`), this.#del(this.#eventIdsDb, `${deviceId}${SEP}${id}`));
      }
      for (const { arrival, record } of kept) {
        ops.push(this.#put(this.#eventsDb, `${deviceId}${SEP}${pad(arrival)}`, record), this.#put(this.#eventIdsDb, `${deviceId}${SEP}${record.id}`, arrival));
      }
      const audit = this.#auditOps(
        fresh
          .filter(({ record }) => SECURITY_EVENTS.has(record.type as EventType))
          .map(({ record }) => ({ at, type: `event.${record.type}`, deviceId, details: { ...record.details, eventId: record.id, seq: record.seq, deviceAt: record.at } })),
      );
      await this.#db.batch([...ops, ...audit.ops] as never);
      this.#devices.set(deviceId, updated);
      const index = this.#eventIndexOf(deviceId);
      for (const [, id] of pruned) index.ids.delete(id);
      index.order.splice(0, pruned.length);
      for (const { arrival, record } of kept) {
        index.ids.set(record.id, arrival);
        index.order.push([arrival, record.id]);
      }
      index.next = next;
      this.#auditSeq = audit.lastSeq;
      return fresh.map((f) => f.record);
    });
  }

  async listDeviceEvents(deviceId: string): Promise<DeviceEventRecord[]> {
    this.#assertOpen();
    const out: DeviceEventRecord[] = [];
    const range = { gt: `${deviceId}${SEP}`, lt: `${deviceId}\x01` };
    for await (const value of this.#eventsDb.values(range) as AsyncIterable<DeviceEventRecord>) out.push(value);
    return out;
  }

  appendAudit(events: readonly AuditEventInput[]): Promise<void> {
    return this.#serialize(async () => {
      const audit = this.#auditOps(events);
      await this.#db.batch(audit.ops as never);
      this.#auditSeq = audit.lastSeq;
    });
  }

  async listAudit(filter?: { deviceId?: string; type?: string }): Promise<AuditEvent[]> {
    this.#assertOpen();
    const out: AuditEvent[] = [];
    for await (const value of this.#auditDb.values() as AsyncIterable<AuditEvent>) {
      if (filter?.deviceId !== undefined && value.deviceId !== filter.deviceId) continue;
      if (filter?.type !== undefined && value.type !== filter.type) continue;
      out.push(value);
    }
    return out;
  }

  /** The device, registered and not revoked (rotation and re-attestation need both). */
  #activeDevice(deviceId: string): DeviceRecord {
    const device = this.#devices.get(deviceId);
    if (!device) throw new InventoryError('INVENTORY_NOT_FOUND', `device ${deviceId} not registered`);
    if (device.revokedAt !== undefined) throw new InventoryError('INVENTORY_REVOKED', `device ${deviceId} is revoked`);
    return device;
  }

  #assertNewCertificate(deviceId: string, cert: CertificateRecord, response: CachedResponse): void {
    if (cert.deviceId !== deviceId || response.deviceId !== deviceId) {
      throw new InventoryError('INVENTORY_CONFLICT', 'certificate or response names another device');
    }
    if (this.#certs.has(cert.serial)) throw new InventoryError('INVENTORY_CONFLICT', `certificate ${cert.serial} exists already`);
  }

  #setCert(c: CertificateRecord): void {
    this.#certs.set(c.serial, c);
    this.#indexCert(c);
  }

  #indexCert(c: CertificateRecord): void {
    let set = this.#certsByDevice.get(c.deviceId);
    if (!set) this.#certsByDevice.set(c.deviceId, (set = new Set()));
    set.add(c.serial);
  }

  #responseKeysOf(deviceId: string): string[] {
    let keys = this.#responseKeys.get(deviceId);
    if (!keys) this.#responseKeys.set(deviceId, (keys = []));
    return keys;
  }

  #eventIndexOf(deviceId: string): EventIndex {
    let idx = this.#events.get(deviceId);
    if (!idx) this.#events.set(deviceId, (idx = { next: 1, ids: new Map(), order: [] }));
    return idx;
  }

  /** Stores a response and prunes the device's oldest beyond RESPONSES_PER_DEVICE; `apply` after the batch. */
  #responseOps(response: CachedResponse): { ops: Op[]; apply: () => void } {
    const requester = response.requester ?? response.deviceId;
    const key = responseKey(requester, response.requestId);
    const keys = (this.#responseKeys.get(requester) ?? []).filter((k) => k !== key);
    const drop = keys.slice(0, Math.max(0, keys.length + 1 - RESPONSES_PER_DEVICE));
    const ops: Op[] = [this.#put(this.#responsesDb, key, response), ...drop.map((k) => this.#del(this.#responsesDb, k))];
    return {
      ops,
      apply: () => {
        for (const k of drop) this.#responses.delete(k);
        this.#responses.set(key, response);
        this.#responseKeys.set(requester, [...keys.slice(drop.length), key]);
      },
    };
  }

  #put<V>(db: Sub<V>, key: string, value: V): Op {
    return { type: 'put', sublevel: db as never, key, value };
  }

  #del<V>(db: Sub<V>, key: string): Op {
    return { type: 'del', sublevel: db as never, key };
  }

  /** Audit keys are zero-padded sequence numbers so LevelDB's order is append order. */
  listCampaigns(): CampaignRecord[] {
    return [...this.#campaigns.values()];
  }

  getCampaign(id: string): CampaignRecord | undefined {
    return this.#campaigns.get(id);
  }

  listCampaignDevices(id: string): CampaignDeviceRecord[] {
    return [...(this.#campaignDevices.get(id)?.values() ?? [])];
  }

  getCampaignDevice(id: string, deviceId: string): CampaignDeviceRecord | undefined {
    return this.#campaignDevices.get(id)?.get(deviceId);
  }

  saveCampaign(campaign: CampaignRecord, devices: readonly CampaignDeviceRecord[], events: readonly AuditEventInput[], expect: 'new' | 'existing'): Promise<void> {
    return this.#serialize(async () => {
      const exists = this.#campaigns.has(campaign.id);
      if (expect === 'new' && exists) throw new InventoryError('INVENTORY_CONFLICT', `campaign ${campaign.id} exists`);
      if (expect === 'existing' && !exists) throw new InventoryError('INVENTORY_NOT_FOUND', `no campaign ${campaign.id}`);
      for (const d of devices) if (d.campaignId !== campaign.id) throw new InventoryError('INVENTORY_CONFLICT', `device record of campaign ${d.campaignId} saved with ${campaign.id}`);
      const audit = this.#auditOps(events);
      await this.#db.batch([
        this.#put(this.#campaignsDb, campaign.id, campaign),
        ...devices.map((d) => this.#put(this.#campaignDevicesDb, `${campaign.id}${SEP}${d.deviceId}`, d)),
        ...audit.ops,
      ] as never);
      this.#campaigns.set(campaign.id, campaign);
      const byDevice = this.#campaignDevicesOf(campaign.id);
      for (const d of devices) byDevice.set(d.deviceId, d);
      this.#auditSeq = audit.lastSeq;
    });
  }

  #campaignDevicesOf(id: string): Map<string, CampaignDeviceRecord> {
    let m = this.#campaignDevices.get(id);
    if (!m) this.#campaignDevices.set(id, (m = new Map()));
    return m;
  }

  #auditOps(events: readonly AuditEventInput[]) {
    let seq = this.#auditSeq;
    const ops = events.map((e): Op => {
      seq += 1;
      const value: AuditEvent = { ...e, seq };
      return { type: 'put', sublevel: this.#auditDb as never, key: pad(seq), value };
    });
    return { ops, lastSeq: seq };
  }
}

/** Usable by the device as far as the inventory knows: neither retired nor revoked. */
function isActive(c: CertificateRecord): boolean {
  return c.supersededAt === undefined && c.revokedAt === undefined;
}

function supersededAudit(c: CertificateRecord, at: number, reason: 'abandoned' | 'confirmed-newer' | 'reattested'): AuditEventInput {
  return { at, type: 'certificate.superseded', deviceId: c.deviceId, details: { serial: c.serial, reason } };
}

function withoutEkEvidence(d: DeviceRecord): DeviceRecord {
  const { ekCertificate: _c, ekTrust: _t, ekPublic: _p, ekTrustedBy: _b, ...rest } = d;
  return rest;
}
