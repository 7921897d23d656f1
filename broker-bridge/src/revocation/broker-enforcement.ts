import { readFile } from 'node:fs/promises';
import { withRevokedIdentities } from '../broker/mosquitto-config.js';
import { writeFileAtomic } from './atomic-file.js';
import { RevocationError } from './errors.js';

/** Makes the broker enforce a revocation state: refuse the revoked certificates, strip revoked identities of every right. */
export interface BrokerEnforcement {
  /**
   * Installs `crlPem` as the broker's CRL file and denies `revokedIdentities` everything in the device
   * ACL, then makes the broker reload both. Rejects REVOCATION_BROKER_FAILED.
   */
  apply(state: { readonly crlPem: string; readonly revokedIdentities: readonly string[] }): Promise<void>;
}

/**
 * mosquitto on this host: writes the CRL file and the revoked-identities section of the generated
 * device ACL atomically (temp + rename), then sends SIGHUP to the broker. The pid comes from a function
 * (EmbeddedBroker knows it) or a pid file (production: start mosquitto with `pid_file` in its config or
 * as a service whose manager writes one, and give the bridge `broker.pidFile`). A CRL alone refuses only
 * new handshakes; the ACL section is what cuts an open session's rights (../shared/FACTS.md).
 */
export class FileBrokerEnforcement implements BrokerEnforcement {
  readonly #o: { crlFile: string; deviceAclFile: string; pid: () => Promise<number | undefined> | number | undefined };

  constructor(o: { crlFile: string; deviceAclFile: string; pid?: () => number | undefined; pidFile?: string }) {
    const pidFile = o.pidFile;
    const pid = o.pid ?? (pidFile ? () => readPidFile(pidFile) : () => undefined);
    this.#o = { crlFile: o.crlFile, deviceAclFile: o.deviceAclFile, pid };
  }

  async apply(state: { readonly crlPem: string; readonly revokedIdentities: readonly string[] }): Promise<void> {
    try {
      await writeFileAtomic(this.#o.crlFile, state.crlPem);
      const acl = await readFile(this.#o.deviceAclFile, 'utf8');
      const next = withRevokedIdentities(acl, state.revokedIdentities);
      if (next !== acl) await writeFileAtomic(this.#o.deviceAclFile, next);
    } catch (e) {
      throw new RevocationError('REVOCATION_BROKER_FAILED', `cannot write the broker's CRL or ACL file: ${(e as Error).message}`, { cause: e });
    }
    const pid = await this.#o.pid();
    // No broker running: it reads both files when it starts.
    if (pid === undefined) return;
    try {
      process.kill(pid, 'SIGHUP');
    } catch (e) {
      throw new RevocationError('REVOCATION_BROKER_FAILED', `cannot signal the broker (pid ${pid})`, { cause: e });
    }
  }
}

async function readPidFile(path: string): Promise<number | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new RevocationError('REVOCATION_BROKER_FAILED', `cannot read the broker pid file ${path}`, { cause: e });
  }
  const pid = Number(text.trim());
  if (!Number.isInteger(pid) || pid <= 1) throw new RevocationError('REVOCATION_BROKER_FAILED', `pid file ${path} holds no pid`);
  return pid;
}
