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
 * Writes `config` to `<path>.tmp`, mode 0600 and fsync'd, and returns a commit function that renames
 * it into place. Split in two so the station registers the device between the steps: the file is on
 * disk before the fleet knows the token, and appears under its final name only once the fleet does.
 */
export function stageBootstrapFile(path: string, config: BootstrapConfig): { commit(): void; discard(): void } {
  const tmp = `${path}.tmp`;
  // A leftover temp file from an interrupted run may carry another mode; start from nothing.
  rmSync(tmp, { force: true });
  writeDurably(tmp, `${JSON.stringify(config, null, 2)}\n`);
  return {
    commit() {
      renameSync(tmp, path);
      fsyncDirectory(dirname(path));
    },
    discard() {
      rmSync(tmp, { force: true });
    },
  };
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
