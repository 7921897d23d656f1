import { closeSync, existsSync, fsyncSync, openSync, readFileSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import type { DeviceRegistration, Inventory, TokenRecord } from '../../broker-bridge/src/inventory/inventory.js';
import type { StationDevice, StationDeviceResult } from '../../common/protocol/station.js';
import { fsyncDirectory } from './bootstrap.js';
import type { BridgeClient } from './bridge-client.js';
import { StationError, toStationError, type StationErrorCode } from './errors.js';
import { decodeRegistrationLine, encodeRegistrationLine } from './registration-line.js';

/**
 * Where the station's registrations go. Both sinks refuse, with STATION_CONFLICT, a device id already
 * bound to another EK and an EK already bound to another device id (one TPM, one device). Neither
 * ever sees a token, only its hash. The batch calls `register` one call at a time.
 */
export interface RegistrationSink {
  register(device: DeviceRegistration, token: TokenRecord): Promise<void>;
}

/** Straight into the fleet inventory: a station next to the bridge (the embedded fleet, the demo). */
export class InventorySink implements RegistrationSink {
  readonly #inventory: Inventory;

  constructor(inventory: Inventory) {
    this.#inventory = inventory;
  }

  async register(device: DeviceRegistration, token: TokenRecord): Promise<void> {
    const holder = this.#inventory.listDevices().find((d) => d.ekPublicHash === device.ekPublicHash && d.deviceId !== device.deviceId);
    if (holder) throw new StationError('STATION_CONFLICT', `this TPM's EK is already registered as device ${holder.deviceId}`);
    try {
      await this.#inventory.registerDevice(device, token);
    } catch (e) {
      throw toStationError(e, `registering ${device.deviceId}`);
    }
  }
}

/**
 * Through the running bridge (common/protocol/station.ts): resolves once the bridge acknowledged the
 * device (registered, or already registered identically). A device the bridge refuses throws its
 * station code (stationErrorOf); no acknowledgment after every retry throws
 * STATION_BRIDGE_UNAVAILABLE, which stops the batch.
 */
export class BridgeSink implements RegistrationSink {
  readonly #client: BridgeClient;

  constructor(client: BridgeClient) {
    this.#client = client;
  }

  async register(device: DeviceRegistration, token: TokenRecord): Promise<void> {
    const [result] = await this.#client.register([stationDeviceOf(device, token)]);
    if (!result) throw new StationError('STATION_BRIDGE_REFUSED', 'the bridge answered without a result');
    if (!result.ok) throw stationErrorOf(result);
  }
}

/** The register command's form of a registration: the token's hash and lifetime, never the token. */
export function stationDeviceOf(device: DeviceRegistration, token: TokenRecord): StationDevice {
  return {
    deviceId: device.deviceId,
    ekKind: device.ekKind,
    ...(device.ekCertificate !== undefined ? { ekCertificate: Buffer.from(device.ekCertificate, 'base64') } : {}),
    ...(device.ekTrust !== undefined ? { ekTrust: device.ekTrust } : {}),
    ...(device.ekPublic !== undefined ? { ekPublic: Buffer.from(device.ekPublic, 'base64') } : {}),
    ekPublicHash: device.ekPublicHash,
    metadata: { ...device.metadata },
    tokenHash: token.tokenHash,
    tokenCreatedAt: token.createdAt,
    tokenExpiresAt: token.expiresAt,
  };
}

/** A device the bridge refused, as the station reports it; the bridge's code stays in `details.cause`. */
export function stationErrorOf(r: Extract<StationDeviceResult, { ok: false }>): StationError {
  const code: StationErrorCode =
    r.code === 'REGISTRATION_CONFLICT'
      ? 'STATION_CONFLICT'
      : r.code === 'EK_UNTRUSTED' || r.code === 'EK_CERT_EXPIRED'
        ? 'STATION_EK_UNTRUSTED'
        : r.retryable
          ? 'STATION_BRIDGE_UNAVAILABLE'
          : 'STATION_REGISTRATION_REFUSED';
  return new StationError(code, `the bridge refused ${r.deviceId}: ${r.code}: ${r.message}`, { details: { cause: r.code } });
}

/**
 * For offline factory lines: appends one JSON line per registration (registration-line.ts) to a file
 * the fleet imports with `importRegistrations`. Each line is fsync'd before `register` resolves, so
 * a device never gets a bootstrap file for a registration the file could lose.
 */
export class ExportFileSink implements RegistrationSink {
  readonly #path: string;
  #byDevice: Map<string, string> | undefined;
  #byEk: Map<string, string> | undefined;
  #tornTail = false;

  constructor(path: string) {
    this.#path = path;
  }

  async register(device: DeviceRegistration, token: TokenRecord): Promise<void> {
    const { byDevice, byEk } = this.#index();
    const ek = byDevice.get(device.deviceId);
    if (ek !== undefined && ek !== device.ekPublicHash) {
      throw new StationError('STATION_CONFLICT', `device ${device.deviceId} is already exported with another EK`);
    }
    const holder = byEk.get(device.ekPublicHash);
    if (holder !== undefined && holder !== device.deviceId) {
      throw new StationError('STATION_CONFLICT', `this TPM's EK is already exported as device ${holder}`);
    }
    try {
      this.#append(`${encodeRegistrationLine(device, token)}\n`);
    } catch (e) {
      throw toStationError(e, `appending to ${this.#path}`);
    }
    byDevice.set(device.deviceId, device.ekPublicHash);
    byEk.set(device.ekPublicHash, device.deviceId);
  }

  #index(): { byDevice: Map<string, string>; byEk: Map<string, string> } {
    if (!this.#byDevice || !this.#byEk) {
      this.#byDevice = new Map();
      this.#byEk = new Map();
      if (existsSync(this.#path)) {
        let text: string;
        try {
          text = readFileSync(this.#path, 'utf8');
        } catch (e) {
          throw toStationError(e, `reading ${this.#path}`);
        }
        // An interrupted write may have left a partial last line; the next line must not extend it.
        this.#tornTail = text.length > 0 && !text.endsWith('\n');
        for (const line of text.split('\n')) {
          if (!line.trim()) continue;
          try {
            const { device } = decodeRegistrationLine(line);
            this.#byDevice.set(device.deviceId, device.ekPublicHash);
            this.#byEk.set(device.ekPublicHash, device.deviceId);
          } catch {
            // import reports bad lines with their numbers; here they only cannot conflict
          }
        }
      }
    }
    return { byDevice: this.#byDevice, byEk: this.#byEk };
  }

  #append(text: string): void {
    const created = !existsSync(this.#path);
    const fd = openSync(this.#path, 'a', 0o600);
    try {
      writeSync(fd, this.#tornTail ? `\n${text}` : text);
      fsyncSync(fd);
      this.#tornTail = false;
    } finally {
      closeSync(fd);
    }
    if (created) fsyncDirectory(dirname(this.#path));
  }
}
