import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Clock } from '../../../common/clock.js';
import { isCodedError } from '../../../common/coded-error.js';
import type { BootstrapConfig } from '../config.js';
import { readSnapshot, SNAPSHOT_DIR } from '../peer-verify-snapshot.js';
import { RevocationCache, type RevocationCacheBatchOp, type RevocationView } from '../revocation-cache.js';
import { AgentStore, type StoredBlobs } from '../store.js';

/**
 * What `agent check` knows about the device without the network: the identity in use, the trust
 * bundle, the clock floor and the cached CRL.
 *
 * Agent stopped: read from its LevelDB store, opened only while reading (nothing is written; the
 * revocation cache is loaded through a read-only view) and closed before any check talks to the TPM
 * or the network, so an agent starting meanwhile finds it free again quickly.
 * Agent running (the store is locked): read from the snapshot the agent keeps for `agent verify`
 * (peer-verify-snapshot.ts); there is no key blob there, so nothing that needs the key runs.
 * Never enrolled (no store, no snapshot): no identity, the bootstrap trust bundle, no CRL.
 */
export interface DeviceIdentity {
  readonly certificate: string;
  readonly serial: string;
  /** Marshalled TPM2B_PUBLIC of the identity key. */
  readonly keyPublic: Buffer;
  /** Key blobs to load it for a TLS handshake: only when read from the store (agent stopped). */
  readonly keyBlobs?: StoredBlobs;
}

export interface DeviceView {
  readonly source: 'store' | 'snapshot' | 'none';
  /** Another process (the agent) holds the store. */
  readonly agentRunning: boolean;
  /** Absent: not enrolled, or (snapshot) not recorded by the running agent. */
  readonly identity: DeviceIdentity | undefined;
  readonly trustBundle: readonly string[];
  /** The identity's issuing chain (completes its path, and the broker's). */
  readonly caCertificates: readonly string[];
  readonly clockFloor: number | undefined;
  readonly revocation: RevocationView & { crlNumber(): bigint | undefined };
  /** CRL freshness grace, seconds. */
  readonly crlGraceSec: number;
}

export async function loadDeviceView(o: { readonly dataDir: string; readonly bootstrap: BootstrapConfig; readonly crlGraceSec: number; readonly clock: Clock }): Promise<DeviceView> {
  const storePath = join(o.dataDir, 'state');
  // Opening LevelDB creates a database where there is none: never for a device that has none yet.
  if (existsSync(join(storePath, 'CURRENT'))) {
    const store = new AgentStore(storePath);
    try {
      // A check only reads: a store from an older build is migrated by the agent, not here.
      await store.open({ migrate: false });
    } catch (e) {
      if (!(isCodedError(e) && e.code === 'AGENT_STORE_LOCKED')) throw e;
      return fromSnapshot(o, true);
    }
    try {
      return await fromStore(store, o);
    } finally {
      await store.close();
    }
  }
  if (existsSync(join(o.dataDir, SNAPSHOT_DIR, 'state.json'))) return fromSnapshot(o, false);
  return neverEnrolled(o, false);
}

async function neverEnrolled(o: { readonly bootstrap: BootstrapConfig; readonly crlGraceSec: number; readonly clock: Clock }, agentRunning: boolean): Promise<DeviceView> {
  const revocation = new RevocationCache({ get: () => Promise.resolve(undefined), batch: (_ops: RevocationCacheBatchOp[]) => Promise.resolve() }, { clock: o.clock, graceSec: o.crlGraceSec });
  await revocation.open();
  return { source: 'none', agentRunning, identity: undefined, trustBundle: o.bootstrap.trustBundle, caCertificates: [], clockFloor: undefined, revocation, crlGraceSec: o.crlGraceSec };
}

async function fromStore(store: AgentStore, o: { readonly bootstrap: BootstrapConfig; readonly crlGraceSec: number; readonly clock: Clock }): Promise<DeviceView> {
  const active = await store.active();
  const sub = store.sublevel('revocation');
  const revocation = new RevocationCache(
    {
      get: (key) => sub.get(key),
      // Read-only: the cache discards unreadable records by writing; the agent does that, not the check.
      batch: () => Promise.resolve(),
    },
    { clock: o.clock, graceSec: o.crlGraceSec },
  );
  await revocation.open();
  return {
    source: 'store',
    agentRunning: false,
    identity: active
      ? { certificate: active.slot.certificate, serial: active.slot.serial, keyPublic: Buffer.from(active.slot.key.public, 'base64'), keyBlobs: active.slot.key }
      : undefined,
    trustBundle: (await store.getTrustBundle()) ?? o.bootstrap.trustBundle,
    caCertificates: active?.slot.chain ?? [],
    clockFloor: await store.getClockFloor(),
    revocation,
    crlGraceSec: o.crlGraceSec,
  };
}

async function fromSnapshot(o: { readonly dataDir: string; readonly clock: Clock; readonly bootstrap: BootstrapConfig; readonly crlGraceSec: number }, agentRunning: boolean): Promise<DeviceView> {
  let snap;
  try {
    snap = await readSnapshot(o.dataDir, o.clock.now());
  } catch (e) {
    // Running, but nothing recorded yet (enrolling for the first time): the same as never enrolled.
    if (!(isCodedError(e) && e.code === 'AGENT_VERIFY_NO_SNAPSHOT')) throw e;
    return neverEnrolled(o, agentRunning);
  }
  const { state, cache } = snap;
  const id = state.identity;
  return {
    source: 'snapshot',
    agentRunning,
    identity: id ? { certificate: id.certificate, serial: id.serial, keyPublic: Buffer.from(id.keyPublic, 'base64') } : undefined,
    trustBundle: state.trustBundle,
    caCertificates: state.caCertificates,
    clockFloor: state.clockFloor,
    revocation: cache,
    // The running agent's own policy, as it wrote it.
    crlGraceSec: state.graceSec,
  };
}
