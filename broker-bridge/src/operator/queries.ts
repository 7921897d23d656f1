import { CodedError } from '../../../common/coded-error.js';
import { DEVICE_STATES, type DeviceState } from '../../../common/protocol/messages.js';
import {
  OPERATOR_HISTORY_MAX,
  OPERATOR_MAP_MAX_KEYS,
  OPERATOR_PAGE_MAX,
  OPERATOR_REPLY_BUDGET_BYTES,
  OPERATOR_TEXT_MAX,
  type OperatorCertificateRow,
  type OperatorDeviceRow,
  type OperatorDeviceState,
  type OperatorReplyCode,
  type OperatorRequestOf,
  type OperatorResultOf,
} from '../../../common/protocol/operator.js';
import type { CertificateRecord, DeviceRecord, Inventory } from '../inventory/inventory.js';

/**
 * The operator queries (`devices`, `device`, `certificates`, `history`): pure reads of the inventory,
 * shaped into the protocol's rows and kept under OPERATOR_REPLY_BUDGET_BYTES.
 */
export type QueryInventory = Pick<Inventory, 'getDevice' | 'listDevices' | 'getCertificate' | 'listCertificates' | 'listAudit' | 'listDeviceEvents'>;

/** What an envelope (`v`, `requestId`, `ok`, a cursor or counters) may add to the rows; generous. */
const ENVELOPE_BYTES = 512;

export function deviceNotFound(deviceId: string): CodedError<OperatorReplyCode> {
  return new CodedError<OperatorReplyCode>('DEVICE_NOT_FOUND', `no device ${deviceId}`);
}

export function requireDevice(inventory: Pick<Inventory, 'getDevice'>, deviceId: string): DeviceRecord {
  const d = inventory.getDevice(deviceId);
  if (!d) throw deviceNotFound(deviceId);
  return d;
}

export function lifecycleState(d: DeviceRecord): OperatorDeviceState {
  return d.revokedAt !== undefined ? 'revoked' : d.enrolledAt !== undefined ? 'enrolled' : 'registered';
}

const cut = (s: string): string => (s.length > OPERATOR_TEXT_MAX ? s.slice(0, OPERATOR_TEXT_MAX) : s);
const isAgentState = (s: string | undefined): s is DeviceState => s !== undefined && (DEVICE_STATES as readonly string[]).includes(s);

export function deviceRow(d: DeviceRecord): OperatorDeviceRow {
  const owner = d.metadata['owner'];
  const model = d.metadata['model'];
  return {
    deviceId: d.deviceId,
    state: lifecycleState(d),
    ...(owner === undefined ? {} : { owner: cut(owner) }),
    ...(model === undefined ? {} : { model: cut(model) }),
    ...(d.certSerial === undefined ? {} : { certSerial: d.certSerial }),
    ...(d.certNotAfter === undefined ? {} : { certNotAfter: d.certNotAfter }),
    ...(d.lastSeenAt === undefined ? {} : { lastSeenAt: d.lastSeenAt }),
    ...(d.online === undefined ? {} : { online: d.online }),
    ...(isAgentState(d.status?.state) ? { agentState: d.status.state } : {}),
  };
}

type DevicesFilter = OperatorRequestOf<'devices'>;

/** Whether `d` passes every filter of a `devices` request at `now` (see common/protocol/operator.ts). */
export function matchesFilter(d: DeviceRecord, f: DevicesFilter, now: number): boolean {
  const state = lifecycleState(d);
  if (f.owner !== undefined && d.metadata['owner'] !== f.owner) return false;
  if (f.model !== undefined && d.metadata['model'] !== f.model) return false;
  if (f.state !== undefined && state !== f.state && d.status?.state !== f.state) return false;
  if (f.expiringWithinDays !== undefined && !(state === 'enrolled' && d.certNotAfter !== undefined && d.certNotAfter <= now + f.expiringWithinDays * 86_400_000)) return false;
  if (f.staleSec !== undefined && !(state === 'enrolled' && now - (d.lastSeenAt ?? d.enrolledAt!) >= f.staleSec * 1000)) return false;
  return true;
}

const jsonBytes = (o: unknown): number => Buffer.byteLength(JSON.stringify(o)) + 1;

/** One page of devices in id order after the cursor, bounded by `limit` and the byte budget. */
export function listDevicesPage(inventory: QueryInventory, f: DevicesFilter, now: number): OperatorResultOf<'devices'> {
  const limit = f.limit ?? OPERATOR_PAGE_MAX;
  const ids = inventory
    .listDevices()
    .filter((d) => (f.cursor === undefined || d.deviceId > f.cursor) && matchesFilter(d, f, now))
    .sort((a, b) => (a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : 0));
  const devices: OperatorDeviceRow[] = [];
  let bytes = ENVELOPE_BYTES;
  for (const d of ids) {
    const row = deviceRow(d);
    const size = jsonBytes(row);
    if (devices.length >= limit || bytes + size > OPERATOR_REPLY_BUDGET_BYTES) break;
    devices.push(row);
    bytes += size;
  }
  const more = devices.length < ids.length;
  return { devices, ...(more ? { nextCursor: devices[devices.length - 1]!.deviceId } : {}) };
}

export function certificateState(c: CertificateRecord, now: number): OperatorCertificateRow['state'] {
  return c.revokedAt !== undefined ? 'revoked' : c.supersededAt !== undefined ? 'superseded' : c.notAfter <= now ? 'expired' : 'active';
}

export function certificateRow(c: CertificateRecord, d: DeviceRecord, now: number): OperatorCertificateRow {
  return {
    serial: c.serial,
    kind: c.kind ?? 'enroll',
    state: certificateState(c, now),
    current: d.certSerial === c.serial,
    notBefore: c.notBefore,
    notAfter: c.notAfter,
    issuedAt: c.issuedAt,
    ...(c.confirmedAt === undefined ? {} : { confirmedAt: c.confirmedAt }),
    ...(c.supersededAt === undefined ? {} : { supersededAt: c.supersededAt }),
    ...(c.revokedAt === undefined ? {} : { revokedAt: c.revokedAt }),
    ...(c.revocationReason === undefined ? {} : { revocationReason: c.revocationReason.slice(0, 64) }),
  };
}

export function showDevice(inventory: QueryInventory, deviceId: string, now: number): OperatorResultOf<'device'> {
  const d = requireDevice(inventory, deviceId);
  const cert = d.certSerial === undefined ? undefined : inventory.getCertificate(d.certSerial);
  return {
    device: {
      deviceId: d.deviceId,
      state: lifecycleState(d),
      metadata: Object.fromEntries(Object.entries(d.metadata).slice(0, OPERATOR_MAP_MAX_KEYS).map(([k, v]) => [k, cut(v)])),
      ekKind: d.ekKind,
      ekPublicHash: d.ekPublicHash,
      registeredAt: d.registeredAt,
      ...pick(d, ['enrolledAt', 'reattestedAt', 'lastRotationAt', 'revokedAt', 'revocationReason', 'certSerial', 'certNotAfter', 'lastSeenAt', 'online']),
      ...(d.status && isAgentState(d.status.state) ? { status: { ...d.status, state: d.status.state } } : {}),
    },
    ...(cert ? { certificate: { ...certificateRow(cert, d, now), pem: cert.pem } } : {}),
  };
}

function pick<T extends object, K extends keyof T>(o: T, keys: readonly K[]): Partial<Pick<T, K>> {
  const out: Partial<Pick<T, K>> = {};
  for (const k of keys) if (o[k] !== undefined) out[k] = o[k];
  return out;
}

export function listDeviceCertificates(inventory: QueryInventory, req: OperatorRequestOf<'certificates'>, now: number): OperatorResultOf<'certificates'> {
  const d = requireDevice(inventory, req.deviceId);
  const all = inventory.listCertificates(req.deviceId).sort((a, b) => b.issuedAt - a.issuedAt || (a.serial < b.serial ? 1 : -1));
  const limit = req.limit ?? OPERATOR_PAGE_MAX;
  const certificates: OperatorCertificateRow[] = [];
  let bytes = ENVELOPE_BYTES;
  for (const c of all) {
    const row = certificateRow(c, d, now);
    const size = jsonBytes(row);
    if (certificates.length >= limit || bytes + size > OPERATOR_REPLY_BUDGET_BYTES) break;
    certificates.push(row);
    bytes += size;
  }
  return { deviceId: req.deviceId, certificates, total: all.length };
}

type Details = Readonly<Record<string, string | number | boolean>>;

/** Details as the protocol bounds them: the first keys, strings cut, only well-formed keys. */
function boundedDetails(details: Details): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const [k, v] of Object.entries(details)) {
    if (Object.keys(out).length >= OPERATOR_MAP_MAX_KEYS) break;
    if (!/^[A-Za-z][A-Za-z0-9_.-]{0,63}$/.test(k)) continue;
    if (typeof v === 'number' && !Number.isFinite(v)) continue;
    out[k] = typeof v === 'string' ? cut(v) : v;
  }
  return out;
}

export async function deviceHistory(inventory: QueryInventory, req: OperatorRequestOf<'history'>): Promise<OperatorResultOf<'history'>> {
  requireDevice(inventory, req.deviceId);
  const limit = req.limit ?? OPERATOR_HISTORY_MAX;
  const [audit, events] = await Promise.all([inventory.listAudit({ deviceId: req.deviceId }), inventory.listDeviceEvents(req.deviceId)]);
  type Entry = { time: number; order: number; audit?: OperatorResultOf<'history'>['audit'][number]; event?: OperatorResultOf<'history'>['events'][number] };
  const entries: Entry[] = [
    ...audit.map((a, i) => ({
      time: a.at,
      order: i,
      audit: { seq: a.seq, at: a.at, type: a.type.slice(0, 64), ...(a.details ? { details: boundedDetails(a.details) } : {}) },
    })),
    ...events.map((e, i) => ({
      time: e.receivedAt,
      order: i,
      event: { id: e.id.slice(0, 64), type: e.type.slice(0, 64), at: e.at, receivedAt: e.receivedAt, seq: e.seq, details: boundedDetails(e.details) },
    })),
  ];
  // The newest first until the limit or the budget, then each list back in its own order.
  entries.sort((a, b) => b.time - a.time || b.order - a.order);
  const kept: Entry[] = [];
  let bytes = ENVELOPE_BYTES;
  for (const e of entries) {
    const size = jsonBytes(e.audit ?? e.event);
    if (kept.length >= limit || bytes + size > OPERATOR_REPLY_BUDGET_BYTES) break;
    kept.push(e);
    bytes += size;
  }
  kept.reverse();
  return {
    deviceId: req.deviceId,
    audit: kept.flatMap((e) => (e.audit ? [e.audit] : [])),
    events: kept.flatMap((e) => (e.event ? [e.event] : [])),
    truncated: kept.length < entries.length,
  };
}
