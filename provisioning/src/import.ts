import { readFileSync } from 'node:fs';
import type { DeviceRecord, Inventory } from '../../broker-bridge/src/inventory/inventory.js';
import { toStationError } from './errors.js';
import { sameMetadata } from './metadata.js';
import { decodeRegistrationLine, type Registration } from './registration-line.js';

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
  readonly invalid: readonly { line: number; reason: string }[];
}

export async function importRegistrations(path: string, inventory: Inventory): Promise<ImportSummary> {
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

  let imported = 0;
  let unchanged = 0;
  const inventoryHolder = new Map(inventory.listDevices().map((d) => [d.ekPublicHash, d.deviceId]));
  for (const { line, reg } of [...latest.values()].sort((a, b) => a.line - b.line)) {
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
  return { lines, imported, unchanged, superseded, conflicts, invalid };
}

function sameRegistration(existing: DeviceRecord, reg: Registration): boolean {
  return (
    existing.ekCertificate === reg.device.ekCertificate &&
    existing.ekKind === reg.device.ekKind &&
    sameMetadata(existing.metadata, reg.device.metadata)
  );
}
