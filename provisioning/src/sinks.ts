import { closeSync, fsyncSync, openSync, readFileSync, writeSync } from 'node:fs';
import type { DeviceRegistration, Inventory, TokenRecord } from '../../broker-bridge/src/inventory/inventory.js';
import { InventoryError } from '../../broker-bridge/src/inventory/inventory.js';
import { array, int, literal, object, oneOf, str, type Infer } from '../../common/protocol/schema.js';
import { DEVICE_ID_PATTERN } from '../../common/protocol/topics.js';
import { StationError } from './station.js';

/**
 * Where registrations go. `InventorySink`: straight into the fleet inventory (a station next to the
 * bridge, the embedded fleet). `ExportFileSink`: an append-only JSON-lines file for offline factory
 * lines, carried to the fleet and imported with `importRegistrations`. Neither holds a token, only
 * its hash.
 */
export interface RegistrationSink {
  register(device: DeviceRegistration, token: TokenRecord): Promise<void>;
}

export class InventorySink implements RegistrationSink {
  readonly #inventory: Inventory;
  constructor(inventory: Inventory) {
    this.#inventory = inventory;
  }
  async register(device: DeviceRegistration, token: TokenRecord): Promise<void> {
    try {
      await this.#inventory.registerDevice(device, token);
    } catch (e) {
      if (e instanceof InventoryError && e.code === 'INVENTORY_CONFLICT') throw new StationError('STATION_CONFLICT', e.message, { cause: e });
      throw e;
    }
  }
}

const hex64 = str({ min: 64, max: 64, pattern: /^[0-9a-f]{64}$/ });
const time = int({ min: 0, max: 8_640_000_000_000_000 });
export const registrationLine = object({
  v: literal(1),
  device: object({
    deviceId: str({ max: 64, pattern: DEVICE_ID_PATTERN }),
    ekPublicHash: hex64,
    ekCertificate: str({ max: 8192, pattern: /^[A-Za-z0-9+/=]+$/ }),
    ekKind: oneOf(['rsa', 'ecc'] as const),
    metadata: array(array(str({ max: 256 }), { min: 2, max: 2 }), { max: 32 }),
    registeredAt: time,
  }),
  token: object({ tokenHash: hex64, createdAt: time, expiresAt: time }),
});
type Line = Infer<typeof registrationLine>;

export class ExportFileSink implements RegistrationSink {
  readonly #path: string;
  constructor(path: string) {
    this.#path = path;
  }
  async register(device: DeviceRegistration, token: TokenRecord): Promise<void> {
    const line: Line = {
      v: 1,
      device: { ...device, metadata: Object.entries(device.metadata) },
      token: { tokenHash: token.tokenHash, createdAt: token.createdAt, expiresAt: token.expiresAt },
    };
    const fd = openSync(this.#path, 'a', 0o600);
    try {
      writeSync(fd, `${JSON.stringify(line)}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }
}

export interface ImportSummary {
  readonly imported: number;
  readonly conflicts: { line: number; deviceId: string; reason: string }[];
  readonly invalid: { line: number; reason: string }[];
}

/** Imports an export file. Idempotent: re-importing registers the same devices and tokens again. */
export async function importRegistrations(path: string, inventory: Inventory): Promise<ImportSummary> {
  const lines = readFileSync(path, 'utf8').split('\n');
  let imported = 0;
  const conflicts: ImportSummary['conflicts'] = [];
  const invalid: ImportSummary['invalid'] = [];
  for (const [i, text] of lines.entries()) {
    if (!text.trim()) continue;
    let line: Line;
    try {
      line = registrationLine.parse(JSON.parse(text), '');
    } catch (e) {
      invalid.push({ line: i + 1, reason: (e as Error).message });
      continue;
    }
    const device: DeviceRegistration = { ...line.device, metadata: Object.fromEntries(line.device.metadata) };
    const existing = inventory.getToken(line.token.tokenHash);
    try {
      await inventory.registerDevice(
        device,
        existing ?? { ...line.token, deviceId: device.deviceId, ekPublicHash: device.ekPublicHash },
      );
      imported++;
    } catch (e) {
      if (e instanceof InventoryError && e.code === 'INVENTORY_CONFLICT') conflicts.push({ line: i + 1, deviceId: device.deviceId, reason: e.message });
      else throw e;
    }
  }
  return { imported, conflicts, invalid };
}
