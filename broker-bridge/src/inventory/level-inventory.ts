import { Level } from 'level';
import {
  InventoryError,
  type AuditEvent,
  type AuditEventInput,
  type CachedResponse,
  type CertificateRecord,
  type CompleteEnrollment,
  type DeviceRecord,
  type DeviceRegistration,
  type Inventory,
  type TokenRecord,
} from './inventory.js';

type BatchOp = { type: 'put'; sublevel: never; key: string; value: unknown };
type Sub<V> = ReturnType<Level<string, unknown>['sublevel']> & { get(key: string): Promise<V | undefined> };

/**
 * LevelDB inventory with a hot in-memory index: every record is loaded at open and reads never touch
 * the disk (a level get costs ~180 µs, too slow per message). Writes go to LevelDB first, in one batch
 * per logical change, and only then to the index, so a crash never leaves the index ahead of the disk.
 * Writers are serialized in-process; one bridge process owns one LevelDB directory (LevelDB's lock
 * enforces it). Horizontal scaling swaps this class for a PostgreSQL one.
 */
export class LevelInventory implements Inventory {
  readonly #db: Level<string, unknown>;
  readonly #devicesDb: Sub<DeviceRecord>;
  readonly #tokensDb: Sub<TokenRecord>;
  readonly #certsDb: Sub<CertificateRecord>;
  readonly #responsesDb: Sub<CachedResponse>;
  readonly #auditDb: Sub<AuditEvent>;
  readonly #devices = new Map<string, DeviceRecord>();
  readonly #tokens = new Map<string, TokenRecord>();
  readonly #certs = new Map<string, CertificateRecord>();
  readonly #responses = new Map<string, CachedResponse>();
  #auditSeq = 0;
  #writeChain: Promise<unknown> = Promise.resolve();
  #open = false;

  constructor(path: string) {
    this.#db = new Level<string, unknown>(path, { valueEncoding: 'json' });
    const sub = <V>(name: string) => this.#db.sublevel<string, V>(name, { valueEncoding: 'json' }) as unknown as Sub<V>;
    this.#devicesDb = sub('devices');
    this.#tokensDb = sub('tokens');
    this.#certsDb = sub('certs');
    this.#responsesDb = sub('responses');
    this.#auditDb = sub('audit');
  }

  async open(): Promise<void> {
    if (this.#open) return;
    await this.#db.open();
    await this.#load(this.#devicesDb, this.#devices);
    await this.#load(this.#tokensDb, this.#tokens);
    await this.#load(this.#certsDb, this.#certs);
    await this.#load(this.#responsesDb, this.#responses);
    for await (const key of this.#auditDb.keys({ reverse: true, limit: 1 })) this.#auditSeq = Number(key);
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
      if (existing && sameToken && JSON.stringify(existing.metadata) === JSON.stringify(device.metadata) && existing.ekCertificate === device.ekCertificate) {
        return; // already registered exactly like this: nothing to write, not even an audit event
      }
      const record: DeviceRecord = existing ? { ...existing, ...device, registeredAt: existing.registeredAt } : device;
      const ops: BatchOp[] = [{ type: 'put', sublevel: this.#devicesDb as never, key: device.deviceId, value: record }];
      // A device has at most one live token: a new one (a re-provisioned device) supersedes the rest.
      const superseded = token
        ? [...this.#tokens.values()].filter((t) => t.deviceId === device.deviceId && t.usedAt === undefined && t.tokenHash !== token.tokenHash)
        : [];
      if (token) ops.push({ type: 'put', sublevel: this.#tokensDb as never, key: token.tokenHash, value: token });
      const audit = this.#auditOps([
        { at: device.registeredAt, type: existing ? 'device.reregistered' : 'device.registered', deviceId: device.deviceId },
      ]);
      const dels = superseded.map((t) => ({ type: 'del' as const, sublevel: this.#tokensDb as never, key: t.tokenHash }));
      await this.#db.batch([...ops, ...dels, ...audit.ops] as never);
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
      const usedToken: TokenRecord = { ...token, usedAt: input.at, usedByRequestId: input.requestId };
      const enrolled: DeviceRecord = {
        ...device,
        enrolledAt: input.at,
        akName: input.akName,
        certSerial: input.certificate.serial,
        certNotAfter: input.certificate.notAfter,
      };
      const audit = this.#auditOps(input.audit);
      await this.#db.batch([
        { type: 'put', sublevel: this.#tokensDb as never, key: usedToken.tokenHash, value: usedToken },
        { type: 'put', sublevel: this.#devicesDb as never, key: enrolled.deviceId, value: enrolled },
        { type: 'put', sublevel: this.#certsDb as never, key: input.certificate.serial, value: input.certificate },
        { type: 'put', sublevel: this.#responsesDb as never, key: input.response.requestId, value: input.response },
        ...audit.ops,
      ]);
      this.#tokens.set(usedToken.tokenHash, usedToken);
      this.#devices.set(enrolled.deviceId, enrolled);
      this.#certs.set(input.certificate.serial, input.certificate);
      this.#responses.set(input.response.requestId, input.response);
      this.#auditSeq = audit.lastSeq;
    });
  }

  getCertificate(serial: string): CertificateRecord | undefined {
    return this.#certs.get(serial);
  }

  listCertificates(deviceId?: string): CertificateRecord[] {
    const all = [...this.#certs.values()];
    return deviceId === undefined ? all : all.filter((c) => c.deviceId === deviceId);
  }

  getResponse(requestId: string): CachedResponse | undefined {
    return this.#responses.get(requestId);
  }

  putResponse(response: CachedResponse): Promise<void> {
    return this.#serialize(async () => {
      await this.#responsesDb.put(response.requestId, response as never);
      this.#responses.set(response.requestId, response);
    });
  }

  appendAudit(events: readonly AuditEventInput[]): Promise<void> {
    return this.#serialize(async () => {
      const audit = this.#auditOps(events);
      await this.#db.batch(audit.ops);
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

  /** Audit keys are zero-padded sequence numbers so LevelDB's order is append order. */
  #auditOps(events: readonly AuditEventInput[]) {
    let seq = this.#auditSeq;
    const ops = events.map((e) => {
      seq += 1;
      const value: AuditEvent = { ...e, seq };
      return { type: 'put' as const, sublevel: this.#auditDb as never, key: String(seq).padStart(16, '0'), value };
    });
    return { ops, lastSeq: seq };
  }
}
