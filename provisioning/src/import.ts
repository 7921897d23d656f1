import { readFileSync } from 'node:fs';
import { ekEvidenceOf, sameEkEvidence, type DeviceRecord, type Inventory } from '../../broker-bridge/src/inventory/inventory.js';
import { REGISTER_MAX_DEVICES, encodeStationRegister } from '../../common/protocol/station.js';
import type { BridgeClient } from './bridge-client.js';
import { StationError, toStationError } from './errors.js';
import { sameMetadata } from './metadata.js';
import { decodeRegistrationLine, type Registration } from './registration-line.js';
import { stationDeviceOf, stationErrorOf } from './sinks.js';

/**
 * Fleet side of the offline line: imports an export file (ExportFileSink) into the inventory.
 *
 * Idempotent: a registration the inventory already holds exactly (device and token) is counted as
 * unchanged and not written, so re-importing a file changes nothing. Not fatal, each reported with
 * its line number: malformed lines, and conflicts (a device id bound to another EK, or an EK bound
 * to another device id, in the inventory or earlier in the file). When a device appears several times
 * (its line re-ran), only its last line counts: importing an earlier one would revive a token the
 * station has already replaced. For the same reason a token minted before the device enrolled with
 * another one is not imported.
 */
export interface ImportSummary {
  /** Non-blank lines read. */
  readonly lines: number;
  /** Registrations written to the inventory. */
  readonly imported: number;
  /** Registrations the inventory already held exactly. */
  readonly unchanged: number;
  /** Lines replaced by a later line for the same device, or whose token the device has moved past. */
  readonly superseded: number;
  readonly conflicts: readonly { line: number; deviceId: string; reason: string }[];
  /** Lines the bridge refused for another reason than a conflict (its code, e.g. EK_UNTRUSTED); always empty offline. */
  readonly refused: readonly { line: number; deviceId: string; code: string; reason: string }[];
  readonly invalid: readonly { line: number; reason: string }[];
}

/** An export file read and checked against itself: the registrations to apply, each with its line. */
export interface ExportFile {
  readonly lines: number;
  /** The last line of each device, in file order. */
  readonly latest: readonly { line: number; reg: Registration }[];
  /** Lines replaced by a later line for the same device. */
  readonly superseded: number;
  readonly conflicts: readonly { line: number; deviceId: string; reason: string }[];
  readonly invalid: readonly { line: number; reason: string }[];
}

export function readExportFile(path: string): ExportFile {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw toStationError(e, `cannot read ${path}`);
  }
  let lines = 0;
  let superseded = 0;
  const invalid: { line: number; reason: string }[] = [];
  const conflicts: { line: number; deviceId: string; reason: string }[] = [];
  const ekOfDevice = new Map<string, string>();
  const deviceOfEk = new Map<string, string>();
  const latest = new Map<string, { line: number; reg: Registration }>();
  text.split('\n').forEach((raw, i) => {
    const line = i + 1;
    if (!raw.trim()) return;
    lines++;
    let reg: Registration;
    try {
      reg = decodeRegistrationLine(raw);
    } catch (e) {
      invalid.push({ line, reason: (e as Error).message });
      return;
    }
    const { deviceId, ekPublicHash } = reg.device;
    const ek = ekOfDevice.get(deviceId);
    const holder = deviceOfEk.get(ekPublicHash);
    if (ek !== undefined && ek !== ekPublicHash) {
      conflicts.push({ line, deviceId, reason: `device ${deviceId} appears earlier in the file with another EK` });
    } else if (holder !== undefined && holder !== deviceId) {
      conflicts.push({ line, deviceId, reason: `its EK appears earlier in the file as device ${holder}` });
    } else {
      ekOfDevice.set(deviceId, ekPublicHash);
      deviceOfEk.set(ekPublicHash, deviceId);
      if (latest.has(deviceId)) superseded++;
      latest.set(deviceId, { line, reg });
    }
  });
  return { lines, latest: [...latest.values()].sort((a, b) => a.line - b.line), superseded, conflicts, invalid };
}

export async function importRegistrations(path: string, inventory: Inventory): Promise<ImportSummary> {
  const file = readExportFile(path);
  let superseded = file.superseded;
  const conflicts = [...file.conflicts];
  let imported = 0;
  let unchanged = 0;
  const inventoryHolder = new Map(inventory.listDevices().map((d) => [d.ekPublicHash, d.deviceId]));
  for (const { line, reg } of file.latest) {
    const { device, token } = reg;
    const existing = inventory.getDevice(device.deviceId);
    const holder = inventoryHolder.get(device.ekPublicHash);
    if (existing && existing.ekPublicHash !== device.ekPublicHash) {
      conflicts.push({ line, deviceId: device.deviceId, reason: `device ${device.deviceId} is registered with another EK` });
      continue;
    }
    if (holder !== undefined && holder !== device.deviceId) {
      conflicts.push({ line, deviceId: device.deviceId, reason: `its EK is registered as device ${holder}` });
      continue;
    }
    const known = inventory.getToken(token.tokenHash);
    if (existing && known?.deviceId === device.deviceId && sameRegistration(existing, reg)) {
      unchanged++;
      continue;
    }
    if (existing?.enrolledAt !== undefined && !known && existing.enrolledAt >= token.createdAt) {
      superseded++;
      continue;
    }
    try {
      // A token the inventory already holds goes back as stored (perhaps used), never as new.
      await inventory.registerDevice(device, known ?? token);
    } catch (e) {
      const err = toStationError(e, `importing line ${line}`);
      if (err.code !== 'STATION_CONFLICT') throw err;
      conflicts.push({ line, deviceId: device.deviceId, reason: err.message });
      continue;
    }
    inventoryHolder.set(device.ekPublicHash, device.deviceId);
    imported++;
  }
  conflicts.sort((a, b) => a.line - b.line);
  return { lines: file.lines, imported, unchanged, superseded, conflicts, refused: [], invalid: file.invalid };
}

/**
 * The same through the running bridge (its Registrar decides, and also checks the EK chain against
 * the fleet's manufacturer trust): batches of up to REGISTER_MAX_DEVICES, each acknowledged. The
 * counts are the bridge's per-device outcomes: `registered`/`updated` are imported, `unchanged` is
 * unchanged. Throws STATION_BRIDGE_UNAVAILABLE / STATION_BRIDGE_REFUSED (re-running is safe).
 */
export async function importThroughBridge(path: string, client: BridgeClient): Promise<ImportSummary> {
  const file = readExportFile(path);
  let imported = 0;
  let unchanged = 0;
  let superseded = file.superseded;
  const conflicts = [...file.conflicts];
  const refused: { line: number; deviceId: string; code: string; reason: string }[] = [];
  for (const batch of batches(file.latest)) {
    const results = await client.register(batch.map(({ reg }) => stationDeviceOf(reg.device, reg.token)));
    batch.forEach(({ line, reg }, i) => {
      const r = results[i];
      if (!r) throw new StationError('STATION_BRIDGE_REFUSED', `the bridge answered ${results.length} results for ${batch.length} devices`);
      if (r.ok) {
        if (r.outcome === 'unchanged') unchanged++;
        else imported++;
      } else if (r.retryable) {
        throw stationErrorOf(r);
      } else if (r.code === 'REGISTRATION_SUPERSEDED') {
        superseded++;
      } else if (r.code === 'REGISTRATION_CONFLICT') {
        conflicts.push({ line, deviceId: reg.device.deviceId, reason: r.message });
      } else {
        refused.push({ line, deviceId: reg.device.deviceId, code: r.code, reason: r.message });
      }
    });
  }
  conflicts.sort((a, b) => a.line - b.line);
  return { lines: file.lines, imported, unchanged, superseded, conflicts, refused, invalid: file.invalid };
}

/** Groups registrations into register commands within the protocol's count and size limits. */
function batches<T extends { reg: Registration }>(items: readonly T[]): T[][] {
  const out: T[][] = [];
  let current: T[] = [];
  const fits = (xs: T[]) => {
    try {
      encodeStationRegister('x'.repeat(64), xs.map(({ reg }) => stationDeviceOf(reg.device, reg.token)));
      return true;
    } catch {
      return false;
    }
  };
  for (const item of items) {
    if (current.length > 0 && (current.length >= REGISTER_MAX_DEVICES || !fits([...current, item]))) {
      out.push(current);
      current = [];
    }
    current.push(item);
  }
  if (current.length > 0) out.push(current);
  return out;
}

function sameRegistration(existing: DeviceRecord, reg: Registration): boolean {
  return (
    sameEkEvidence(ekEvidenceOf(existing), ekEvidenceOf(reg.device)) &&
    existing.ekKind === reg.device.ekKind &&
    sameMetadata(existing.metadata, reg.device.metadata)
  );
}
