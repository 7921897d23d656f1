import { closeSync, fchmodSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

/**
 * The device's bootstrap config: exactly what the agent reads (agent/src/config.ts validates it). It
 * carries the one-time enrollment token in clear, so it exists only in this file, mode 0600.
 */
export interface BootstrapConfig {
  readonly v: 1;
  readonly deviceId: string;
  readonly tcti: string;
  /** The EK the station verified and registered: the agent attests with it (absent: the agent's own order). */
  readonly ekKind?: 'ecc' | 'rsa';
  /** 'factory': no EK certificate, the EK registered under the factory-trusted EK policy. */
  readonly ekTrust?: 'factory';
  readonly baseTopic: string;
  readonly enrollUrl: string;
  readonly deviceUrl: string;
  /** PEM certificates the device trusts for the brokers and the fleet CA. */
  readonly trustBundle: readonly string[];
  readonly token: string;
  /** ms since the epoch. */
  readonly tokenExpiresAt: number;
}

/**
 * Writes `config` to `path` atomically and durably: `<path>.tmp` (mode 0600, fsync'd), renamed into
 * place, directory fsync'd. A crash leaves either no file or the whole file under its final name.
 * The station calls it only after the fleet acknowledged the device's registration.
 */
export function writeBootstrapFile(path: string, config: BootstrapConfig): void {
  const tmp = `${path}.tmp`;
  // A leftover temp file from an interrupted run may carry another mode; start from nothing.
  rmSync(tmp, { force: true });
  try {
    writeDurably(tmp, `${JSON.stringify(config, null, 2)}\n`);
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  fsyncDirectory(dirname(path));
}

function writeDurably(path: string, text: string): void {
  const fd = openSync(path, 'wx', 0o600);
  try {
    fchmodSync(fd, 0o600);
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export function fsyncDirectory(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
