import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { systemClock, type Clock } from '../../common/clock.js';
import { CodedError, isCodedError } from '../../common/coded-error.js';
import type { RejectionCode } from '../../common/protocol/errors.js';
import { encode } from '../../common/protocol/messages.js';
import { CLIENT_ID_PREFIX, DEFAULT_BASE_TOPIC, Topics } from '../../common/protocol/topics.js';
import { MqttTransport, type MqttTransportOptions } from '../../common/transport/mqtt-transport.js';
import type { Transport } from '../../common/transport/transport.js';
import { preferredEk } from '../../native/lib/ek-order.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import type { EkChoice, EkKind, Tpm, TpmKey } from '../../native/lib/tpm.js';
import { DEFAULT_AGENT_CONFIG, type AgentRuntimeConfig } from './agent-config.js';
import { abortError, Backoff, sleep as realSleep, type Sleep } from './backoff.js';
import { checkTrustBundle, type BootstrapConfig } from './config.js';
import { enroll, enrollClientIdFor, EnrollmentError, fromStored, toStored, type EnrollmentResult } from './enrollment.js';
import { LinkRefusedError, MqttLink, type LinkIdentity } from './mqtt-link.js';
import { eventBody, Outbox, type NewEvent } from './outbox.js';
import { advanceFloor, identityPhase, judgeNow, nextWakeMs, type PhasePolicy } from './policy.js';
import { confirmRotation, requestRotation, type RotationDeps } from './rotation.js';
import { EventAcks } from './event-acks.js';
import { FleetCommands, type ScheduledCommand } from './fleet-commands.js';
import { askFleetTime, beyondTolerance, skewOf, type Skew } from './fleet-clock.js';
import { FleetUpdates } from './fleet-updates.js';
import { verifyPeer, type PeerVerdict } from './peer-verify.js';
import { RevocationCache } from './revocation-cache.js';
import { countSignatures } from './signature-counter.js';
import { statusBody, windowOf, type AgentState } from './status.js';
import { AgentStore, AgentStoreError, type ActiveIdentity, type LastRotation, type PendingRotation, type StoredAk } from './store.js';
import { AGENT_VERSION } from './version.js';

export type { AgentState } from './status.js';

/**
 * The device agent: a long-running supervisor over an explicit state machine (status.ts has the
 * diagram). `new Agent(options)` does nothing; `start()` opens the store and the TPM and starts the
 * supervisor loop, which forever:
 *   1. finishes a rotation left half-done (trial connection, confirmation);
 *   2. enrolls (token) or re-attests (no token) when there is no usable identity;
 *   3. judges the identity with the clock floor: expired or within grace of expiry → re-attest;
 *   4. keeps the mutual-TLS connection up (backoff, full jitter, forever), status retained, outbox drained;
 *   5. runs a due fleet command (operator rotate-now / reattest, fleet-commands.ts), once per command id;
 *   6. rotates at the jittered renewal point (policy.ts), or when asked (`rotateNow()`);
 *   7. sleeps until the next timing decision or until something wakes it (connection lost, rotateNow, stop).
 * No network condition ends the loop. Non-retryable rejections and corrupt local state park it in
 * `error` (or `revoked`): the agent stays up, reports the code, and ends only on `stop()`.
 * No global state: a simulator runs many agents in one process.
 */
export type { TransportPurpose };

/** The fleet's CRL lists this agent's own certificate: the identity is no longer used. */
export class AgentRevokedError extends CodedError<'AGENT_REVOKED'> {}
type TransportPurpose = 'enroll' | 'device';

/** pino-compatible subset (a pino logger fits). Never given the token or key blobs. */
export interface AgentLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface AgentOptions {
  readonly bootstrap: BootstrapConfig;
  readonly dataDir: string;
  /** Offline budget, backoff, tick, outbox bound (agent-config.ts); default DEFAULT_AGENT_CONFIG. */
  readonly config?: AgentRuntimeConfig;
  readonly clock?: Clock;
  readonly logger?: AgentLogger;
  /** An already open TPM (the agent then does not close it); default: NativeTpm.open(bootstrap.tcti). */
  readonly tpm?: Tpm;
  /** How transports are made (tests, simulator); default: MqttTransport. */
  readonly transportFactory?: (opts: MqttTransportOptions, purpose: TransportPurpose) => Transport;
  /** Waits between retries; tests may inject a faster one. */
  readonly sleep?: Sleep;
  /** Jitter source in [0, 1); default Math.random. */
  readonly random?: () => number;
  /** Wait for each answer before sending again. Default 15 000. */
  readonly responseTimeoutMs?: number;
  /** Rejected enrollment attempts (retryable codes) before giving up. Default: never. */
  readonly maxAttempts?: number;
  /** Default: the build-stamped version (version.ts). */
  readonly agentVersion?: string;
}

export interface AgentStatus {
  readonly deviceId: string;
  readonly state: AgentState;
  readonly online: boolean;
  readonly slot?: 'A' | 'B';
  readonly certSerial?: string;
  readonly certNotAfter?: number;
  /** TPM signing operations this agent asked for outside TLS handshakes (CSR, certify). */
  readonly tpmSignatures: number;
  /** Completed mutual-TLS connects; each costs one TPM signature (CertificateVerify). */
  readonly tlsHandshakes: number;
  /** The enrollment (or re-attestation) this agent ran last, if any. */
  readonly enrollment?: { readonly tpmSignatures: number; readonly messagesSent: number; readonly resumed: boolean };
  /** Rotations completed by this process, and the TPM signatures the last one cost (CSR, certify, handshake). */
  readonly rotations: number;
  readonly lastRotationSignatures?: number;
  readonly lastRotation?: LastRotation;
  /** Negative when the system clock is behind the time floor (then never used to judge validity). */
  readonly clockSkewMs: number;
  readonly outbox: { readonly pending: number; readonly dropped: number };
  /** The cached fleet CRL: its number, thisUpdate, and freshness by the revocation grace policy. */
  readonly crl?: { readonly crlNumber: string; readonly thisUpdate: number; readonly freshness: 'fresh' | 'stale' | 'none'; readonly revokedSerials: number };
  /** Version of the signed trust bundle in use (absent: the one from enrollment or bootstrap). */
  readonly trustBundleVersion?: number;
  /** Why the agent is in state `error` or `revoked`. */
  readonly error?: { readonly code: string; readonly rejection?: RejectionCode; readonly message: string };
  /**
   * The TPM refused the last step (e.g. TPM_RC_LOCKOUT: dictionary-attack lockout), which the agent
   * retries at its backoff's pace; cleared by the next step that goes through.
   */
  readonly tpmError?: { readonly code: string; readonly message: string; readonly at: number };
  /** The EK the agent attests with (ECC before RSA, each in its documented NV index order; docs/hardware.md). */
  readonly ek?: { readonly kind: EkKind; readonly template: string; readonly nvIndex: string };
}

interface Resources {
  readonly store: AgentStore;
  readonly tpm: Tpm;
  readonly signatures: () => number;
  readonly ownsTpm: boolean;
  readonly srk: TpmKey;
  readonly ak: StoredAk;
  readonly outbox: Outbox;
  /** The fleet CRL (complete + delta) in LevelDB with its in-memory index. */
  readonly revocation: RevocationCache;
  readonly tpmInfo?: { readonly manufacturer: string; readonly firmwareVersion: string; readonly ek?: string };
}

const hex32 = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;
const ekLabel = (ek: EkChoice) => `${ek.template} ${hex32(ek.nvIndex)}`;
/** The template NativeTpm.createEk derives an EK from when the TPM holds no certificate for its kind. */
const LOW_RANGE_TEMPLATE: Readonly<Record<EkKind, string>> = { ecc: 'L-2 ECC P-256', rsa: 'L-1 RSA-2048' };

/** Codes of the TPM and of tpm2-tss (native/lib/tpm-error.ts). */
const TPM_ERROR_CODE = /^(TPM_|RESMGR_|ESYS_|TCTI_|SYS_|MU_)/;

/** Connection refusals with an unexpired identity before the agent tries re-attestation instead. */
const REFUSALS_BEFORE_REATTEST = 3;

export class Agent {
  readonly #o: AgentOptions;
  readonly #clock: Clock;
  readonly #sleep: Sleep;
  readonly #config: AgentRuntimeConfig;
  readonly #topics: Topics;
  readonly #listeners = new Set<(s: AgentState) => void>();
  readonly #crlListeners = new Set<(crlNumber: string) => void>();
  #crlNotified: string | undefined;
  #state: AgentState = 'stopped';
  #ek: EkChoice | undefined;
  #tpmError: AgentStatus['tpmError'];
  #res: Resources | undefined;
  #abort: AbortController | undefined;
  #loop: Promise<void> | undefined;
  #firstOnline: { promise: Promise<void>; resolve: () => void; reject: (e: unknown) => void } | undefined;
  #device: MqttLink | undefined;
  #enrollLink: MqttLink | undefined;
  #identity: ActiveIdentity | undefined;
  #trust: readonly string[] | undefined;
  #floor: number | undefined;
  #skewReported = false;
  /** The last measurement against the fleet clock (fleet-clock.ts), with the device clock when it was taken. */
  #fleetSkew: (Skew & { readonly at: number }) | undefined;
  #fleetSkewReported = false;
  #clockCheck: Promise<void> | undefined;
  /** Device clock at the last measurement attempt (answered or not). */
  #clockCheckAt: number | undefined;
  #wake: (() => void) | undefined;
  #woken = false;
  /** Liveness for a watchdog: the supervisor's moves (steps, waits begun and ended), and its timed waits under way. */
  #moves = 0;
  #waits = 0;
  /** The broker refused a publish on our own topics: re-attest at the next step. */
  #unusable = false;
  #lifetimeWarned = false;
  #phase = 'not started';
  #stopPhase: string | undefined;
  #statusReport: NodeJS.Timeout | undefined;
  #announced = false;
  #finishing = false;
  #rotateRequested = false;
  #rotationNotBefore = 0;
  #refusals = 0;
  #handshakes = 0;
  #signaturesBefore = 0;
  #rotations = 0;
  #lastRotationSignatures: number | undefined;
  #lastRotation: LastRotation | undefined;
  #enrollment: EnrollmentResult | undefined;
  #error: AgentStatus['error'];
  #draining: Promise<void> | undefined;
  /** CRL and trust bundle from the fleet topics (made in #open, with the store). */
  #fleet: FleetUpdates | undefined;
  /** Operator commands from the fleet (rotate-now, reattest), and the one due next. */
  #commands: FleetCommands | undefined;
  #command: ScheduledCommand | undefined;
  /** A rotate-now command whose rotation has not stored its pending record yet. */
  #commandRotation: string | undefined;
  /** Set when the cached CRL lists the active identity; the next step parks the agent in `revoked`. */
  #revokedByCrl: { readonly serial: string; readonly reason?: string } | undefined;
  readonly #stepBackoff: Backoff;
  readonly #rotationBackoff: Backoff;
  readonly #refusalBackoff: Backoff;
  readonly #unusableBackoff: Backoff;
  readonly #ackBackoff: Backoff;
  readonly #eventAcks: EventAcks;
  /** After a rollback: the serial still in use and the refused one, for the bridge to retire. */
  #retire: { readonly serial: string; readonly previousSerial: string } | undefined;

  constructor(options: AgentOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
    const sleep = options.sleep ?? realSleep;
    // Every retry wait of the supervisor (its own, the links', enrollment's, rotation's) goes through here.
    this.#sleep = (ms, signal) => this.#waitOn(sleep(ms, signal));
    this.#config = options.config ?? DEFAULT_AGENT_CONFIG;
    this.#topics = new Topics(options.bootstrap.baseTopic ?? DEFAULT_BASE_TOPIC);
    this.#stepBackoff = this.#newBackoff();
    this.#rotationBackoff = this.#newBackoff();
    this.#refusalBackoff = this.#newBackoff();
    this.#unusableBackoff = this.#newBackoff();
    this.#ackBackoff = this.#newBackoff();
    this.#eventAcks = new EventAcks(this.#topics, options.bootstrap.deviceId);
  }

  get state(): AgentState {
    return this.#state;
  }

  get deviceId(): string {
    return this.#o.bootstrap.deviceId;
  }

  /**
   * What the agent is waiting for right now: the supervisor's step, the device link's connection
   * phase, and stop's progress. For diagnosing a step that never ends; not a stable interface.
   */
  diagnostics(): { readonly phase: string; readonly link: string; readonly stopping?: string } {
    return { phase: this.#phase, link: this.#device?.phase ?? 'none', ...(this.#stopPhase ? { stopping: this.#stopPhase } : {}) };
  }

  /**
   * For a watchdog (service-manager.ts): `moves` counts the supervisor's steps and the starts and ends of
   * its waits; `waiting` is true while it sleeps on a timer (a wait that ends by itself on a running
   * event loop). A supervisor that neither waits nor moves for long is stuck, e.g. on a TPM call that
   * never returns. Read-only; changes nothing.
   */
  liveness(): { readonly moves: number; readonly waiting: boolean } {
    return { moves: this.#moves, waiting: this.#waits > 0 };
  }

  /** Calls `listener` on every state change; returns the function that removes it. */
  onStateChange(listener: (s: AgentState) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Called with the fleet CRL number (decimal) each time the agent takes a newer CRL, right after it
   * is stored. Returns a function that removes the listener. Listener errors are ignored.
   */
  onCrlChange(listener: (crlNumber: string) => void): () => void {
    this.#crlListeners.add(listener);
    return () => this.#crlListeners.delete(listener);
  }

  status(): AgentStatus {
    const id = this.#identity;
    const e = this.#enrollment;
    const outbox = this.#res?.outbox;
    return {
      deviceId: this.deviceId,
      state: this.#state,
      online: this.#device?.connected === true,
      ...(id ? { slot: id.name, certSerial: id.slot.serial, certNotAfter: id.slot.notAfter } : {}),
      tpmSignatures: this.#signaturesBefore + (this.#res?.signatures() ?? 0),
      tlsHandshakes: this.#handshakes,
      ...(e ? { enrollment: { tpmSignatures: e.tpmSignatures, messagesSent: e.messagesSent, resumed: e.resumed } } : {}),
      rotations: this.#rotations,
      ...(this.#lastRotationSignatures === undefined ? {} : { lastRotationSignatures: this.#lastRotationSignatures }),
      ...(this.#lastRotation ? { lastRotation: this.#lastRotation } : {}),
      clockSkewMs: this.#reportedSkewMs(this.#clock.now()),
      outbox: { pending: outbox?.pending() ?? 0, dropped: outbox?.dropped() ?? 0 },
      ...this.#fleetStatus(),
      ...(this.#error ? { error: this.#error } : {}),
      ...(this.#tpmError ? { tpmError: this.#tpmError } : {}),
      ...(this.#ek ? { ek: { kind: this.#ek.kind, template: this.#ek.template, nvIndex: hex32(this.#ek.nvIndex) } } : {}),
    };
  }

  /** What the retained status tells the fleet the device holds (a campaign can wait for it). */
  #fleetAcknowledgement(): { crlNumber?: string; trustBundleVersion?: number } {
    const { crl, trustBundleVersion } = this.#fleetStatus();
    return { ...(crl ? { crlNumber: crl.crlNumber } : {}), ...(trustBundleVersion === undefined ? {} : { trustBundleVersion }) };
  }

  #fleetStatus(): Pick<AgentStatus, 'crl' | 'trustBundleVersion'> {
    const crl = this.#fleet?.crlSummary();
    const version = this.#fleet?.trustVersion;
    return { ...(crl ? { crl } : {}), ...(version === undefined ? {} : { trustBundleVersion: version }) };
  }

  /**
   * Whether a peer's certificate is valid now, answered offline: chain to the trust bundle (the agent's
   * own issuing chain and `chain` complete the path), validity at the judged time (clock floor applied),
   * revocation and freshness from the cached CRL. Available while the agent is started.
   */
  verifyPeer(certPem: string, chain: readonly string[] = []): PeerVerdict {
    const res = this.#res;
    if (!res) return { valid: false, code: 'CRL_MISSING', reason: 'the agent is not started' };
    return verifyPeer(certPem, {
      trustBundle: this.#trust ?? this.#o.bootstrap.trustBundle,
      chain: [...chain, ...(this.#identity?.slot.chain ?? [])],
      now: this.#judgeQuiet(),
      cache: res.revocation,
    });
  }

  /**
   * Opens the store and the TPM and starts the supervisor. Resolves the first time the agent is online;
   * rejects (coded) when it parks in `error`/`revoked` before that, or when it could not open its
   * store or TPM. A parked agent stays up (status, stop()) until stopped.
   */
  start(): Promise<void> {
    if (this.#firstOnline) return this.#firstOnline.promise;
    let resolve!: () => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => undefined); // the caller of start() sees it; nobody else must
    this.#firstOnline = { promise, resolve, reject };
    const abort = new AbortController();
    this.#abort = abort;
    this.#error = undefined;
    this.#set('starting');
    this.#loop = this.#open().then(
      // The loop ends by throwing AGENT_STOPPED out of a wait when stop() aborts it; nothing else escapes it.
      () =>
        this.#supervise(abort.signal).catch((e: unknown) => {
          if (!abort.signal.aborted) this.#log('error', 'supervisor ended unexpectedly', { code: isCodedError(e) ? e.code : undefined, err: (e as Error).message });
        }),
      async (e: unknown) => {
        // Could not open the store or the TPM: nothing runs, the caller decides (the CLI exits 1 so a
        // service manager restarts it, e.g. a TPM not ready yet at boot).
        this.#error = { code: isCodedError(e) ? e.code : 'AGENT_INTERNAL', message: (e as Error).message };
        this.#log('error', 'cannot start', { code: this.#error.code, err: this.#error.message });
        await this.#release();
        this.#firstOnline = undefined;
        this.#abort = undefined;
        this.#set('stopped');
        reject(e);
      },
    );
    return promise;
  }

  /**
   * Queues an event in the outbox (stored before this resolves; sent in order once connected; see
   * outbox.ts for the drop policy). The agent emits its own lifecycle events; this is for what the
   * device wants to report besides. Resolves false when the event was dropped (outbox full).
   */
  async emitEvent(e: NewEvent): Promise<boolean> {
    if (!this.#res) return false;
    return this.#emit(e);
  }

  /** Asks for a rotation now (operator command, tests); the supervisor picks it up at once. */
  rotateNow(): void {
    this.#rotateRequested = true;
    this.#rotationNotBefore = 0;
    this.#poke();
  }

  /** Publishes offline status, disconnects, releases TPM objects and the store. Interrupts anything in progress. */
  async stop(): Promise<void> {
    if (this.#state === 'stopped' || this.#state === 'stopping' || !this.#abort) return;
    const wasStarting = this.#firstOnline;
    this.#abort.abort();
    this.#set('stopping');
    this.#poke();
    const device = this.#device;
    clearTimeout(this.#statusReport);
    this.#statusReport = undefined;
    this.#stopPhase = 'publishing offline status';
    // Bounded: on a half-open connection the PUBACK would wait for keepalive; the will covers it then.
    if (device?.transport) await Promise.race([this.#publishStatus(false).catch(() => undefined), new Promise((r) => setTimeout(r, 2_000).unref())]);
    this.#stopPhase = 'closing the links';
    await device?.close();
    await this.#enrollLink?.close();
    this.#stopPhase = 'waiting for the supervisor';
    await this.#loop?.catch(() => undefined);
    this.#stopPhase = 'releasing TPM and store';
    await this.#release();
    this.#stopPhase = undefined;
    wasStarting?.reject(abortError());
    this.#firstOnline = undefined;
    this.#abort = undefined;
    this.#set('stopped');
  }

  // ---- resources ---------------------------------------------------------------------------------

  async #open(): Promise<void> {
    const cfg = this.#o.bootstrap;
    checkTrustBundle(cfg);
    mkdirSync(this.#o.dataDir, { recursive: true, mode: 0o700 });
    const store = new AgentStore(join(this.#o.dataDir, 'state'));
    const opened = await store.open();
    // An upgrade from a build with an older store layout (agent/src/store-migrations.ts).
    if (opened.migrated.length > 0) this.#log('info', 'store migrated', { from: opened.from, to: opened.schema, migrations: opened.migrated });
    let tpm: Tpm | undefined;
    try {
      const counted = countSignatures(this.#o.tpm ?? (await NativeTpm.open(cfg.tcti)));
      tpm = counted.tpm;
      // Without a resource manager (swtpm) a killed predecessor's objects stay loaded; free them first.
      const reclaimed = await tpm.reclaimSlots();
      if (reclaimed) this.#log('warn', 'flushed TPM objects left by a previous process', { reclaimed });
      const srk = await tpm.ensureSrk();
      const ak = await this.#ensureAk(tpm, srk, store);
      let tpmInfo: Resources['tpmInfo'];
      try {
        const caps = await tpm.capabilities();
        // The EK enrollment and re-attestation use (the same choice: native/lib/ek-order.ts).
        const { ekKind, ekTrust } = this.#o.bootstrap;
        const ek = await preferredEk(tpm, ekKind);
        this.#ek = ek ?? undefined;
        // No certificate in NV (registered with one supplied, or factory-trusted): the registered kind from its TCG low-range template.
        const label = ek ? ekLabel(ek) : ekKind ? `${LOW_RANGE_TEMPLATE[ekKind]} ${ekTrust === 'factory' ? 'factory-trusted' : 'no NV certificate'}` : undefined;
        tpmInfo = { manufacturer: caps.manufacturer, firmwareVersion: caps.firmwareVersion, ...(label ? { ek: label } : {}) };
        if (ek) this.#log('info', 'EK in use', { kind: ek.kind, template: ek.template, nvIndex: hex32(ek.nvIndex) });
        else if (label) this.#log('info', 'EK in use', { kind: ekKind, template: label });
      } catch (e) {
        this.#log('warn', 'could not read TPM capabilities', { code: isCodedError(e) ? e.code : undefined });
      }
      const outbox = new Outbox(store.sublevel('outbox'), { clock: this.#clock, maxEvents: this.#config.outbox.maxEvents });
      await outbox.open();
      const revocation = new RevocationCache(store.sublevel('revocation'), { clock: this.#clock, graceSec: this.#config.revocation.graceSec });
      if ((await revocation.open()) === 'discarded') this.#log('warn', 'the cached CRL was unreadable and is discarded; waiting for the fleet to send it again');
      this.#floor = await store.getClockFloor();
      this.#lastRotation = await store.getLastRotation();
      this.#res = { store, tpm, signatures: counted.signatures, ownsTpm: !this.#o.tpm, srk, ak, outbox, revocation, ...(tpmInfo ? { tpmInfo } : {}) };
      this.#identity = await store.active();
      this.#trust = await store.getTrustBundle();
      const fleet = this.#fleetUpdates(store, revocation, await store.getTrustBundleVersion());
      this.#fleet = fleet;
      this.#command = undefined;
      this.#commandRotation = undefined;
      const commands = this.#fleetCommands(store);
      this.#commands = commands;
      await commands.open();
      // Killed while a command's action was under way: its own pending record finishes it; the command is done.
      const scheduled = this.#command as ScheduledCommand | undefined; // set by open() through the host
      if (scheduled && (await store.getPending())) {
        await commands.started(scheduled.id);
        this.#command = undefined;
      }
      const crlTime = revocation.thisUpdate();
      if (crlTime !== undefined) await this.#advanceFloor(crlTime);
      fleet.checkOwnCertificate();
      if (this.#identity) await fleet.writeSnapshot();
      const pending = await store.getPending();
      if (pending) this.#log('info', 'resuming unfinished work', { kind: pending.kind, phase: pending.kind === 'rotate' ? pending.phase : undefined });
      if (this.#identity) await this.#advanceFloor(windowOf(this.#identity.slot).notBefore);
    } catch (e) {
      if (tpm && !this.#o.tpm) await tpm.close().catch(() => undefined);
      await store.close().catch(() => undefined);
      throw e;
    }
  }

  /** The attestation key: created once, its blobs and Name stored; not kept loaded (slots are scarce). */
  async #ensureAk(tpm: Tpm, srk: TpmKey, store: AgentStore): Promise<StoredAk> {
    const stored = await store.getAk();
    if (stored) {
      const ak = await tpm.loadKey(srk, fromStored(stored.blobs));
      await tpm.flush(ak);
      if (ak.name.toString('hex') !== stored.name) {
        throw new AgentStoreError('AGENT_STATE_CORRUPT', 'the stored attestation key loads with another TPM Name');
      }
      return stored;
    }
    const created = await tpm.createAttestationKey(srk);
    await tpm.flush(created.key);
    const ak: StoredAk = { blobs: toStored(created.blobs), name: created.key.name.toString('hex') };
    await store.putAk(ak);
    return ak;
  }

  async #release(): Promise<void> {
    const res = this.#res;
    this.#res = undefined;
    await this.#device?.close();
    this.#device = undefined;
    if (!res) return;
    this.#signaturesBefore += res.signatures();
    if (res.ownsTpm) await res.tpm.close().catch(() => undefined);
    await res.store.close().catch(() => undefined);
  }

  // ---- the supervisor ----------------------------------------------------------------------------

  async #supervise(signal: AbortSignal): Promise<void> {
    for (;;) {
      if (signal.aborted) return;
      this.#moves++;
      try {
        await this.#step(signal);
        this.#stepBackoff.reset();
        this.#tpmError = undefined;
      } catch (e) {
        if (signal.aborted) return;
        if (this.#isFinal(e)) {
          this.#fail(e);
          if (this.#state === 'revoked') {
            // Stop using the identity: say so (event and status) while the session may still exist, then end it.
            await this.#announceRevoked();
            await this.#publishStatus(false).catch(() => undefined);
            await this.#device?.close();
            this.#device = undefined;
          } else {
            await this.#publishStatus(true).catch(() => undefined);
          }
          return this.#park(signal);
        }
        if (isCodedError(e) && e.code === 'TRANSPORT_PUBLISH_REFUSED') {
          // The broker refused a publish on our own topics: this identity has lost its rights (revoked,
          // or the fleet no longer knows it). Prove the device again; the bridge refuses a revoked one.
          this.#log('warn', 'the broker refused a publish on our own topics; re-attesting', { serial: this.#identity?.slot.serial });
          this.#unusable = true;
          continue;
        }
        // A TPM hiccup, a store error, a certificate the fleet should not have sent: log and retry later.
        const waitMs = this.#stepBackoff.next();
        if (isCodedError(e) && TPM_ERROR_CODE.test(e.code)) {
          this.#tpmError = { code: e.code, message: e.message, at: this.#clock.now() };
          if (e.code === 'TPM_RC_LOCKOUT') {
            // Asking again cannot make a lockout worse (no authorization fails), and it ends by itself.
            this.#log('error', "the TPM is in dictionary-attack lockout and refuses our keys until its recovery time passes or its owner clears it (tpm2_dictionarylockout --clear-lockout); retrying at the backoff's pace", { code: e.code, waitMs });
          }
        }
        this.#log('warn', 'supervisor step failed; retrying', { code: isCodedError(e) ? e.code : 'UNEXPECTED', err: (e as Error).message, waitMs });
        await this.#idle(waitMs, signal);
      }
    }
  }

  /** Parked in error/revoked: stays up (and keeps the process alive) until stop(). */
  async #park(signal: AbortSignal): Promise<void> {
    for (;;) await this.#idle(2 ** 31 - 1, signal, 'tick');
  }

  async #step(signal: AbortSignal): Promise<void> {
    const res = this.#res!;
    // 0. The fleet's CRL lists the identity in use: never present it again.
    const revoked = this.#revokedByCrl;
    if (revoked) {
      throw new AgentRevokedError('AGENT_REVOKED', `the fleet CRL lists this device's certificate ${revoked.serial}${revoked.reason ? ` (${revoked.reason})` : ''}`, {
        details: { serial: revoked.serial },
      });
    }
    const pending = await res.store.getPending();
    // 1. A rotation past its request phase finishes before anything else.
    if (pending?.kind === 'rotate' && pending.phase !== 'requesting' && !this.#finishing) {
      this.#finishing = true;
      this.#log('info', 'finishing a rotation', { phase: pending.phase, slot: pending.slot, serial: pending.serial });
    }
    this.#phase = `step: ${pending ? `${pending.kind}${pending.kind === 'rotate' ? `/${pending.phase}` : ''}` : 'steady'}`;
    if (pending?.kind === 'rotate' && pending.phase === 'trial') return this.#trial(pending, signal);
    if (pending?.kind === 'rotate' && pending.phase === 'confirming') {
      this.#identity = await res.store.active();
      if (!(await this.#connect(signal))) return;
      return this.#confirm(pending, signal);
    }
    // 2. No identity, or an attestation left half-done.
    const active = await res.store.active();
    if (pending?.kind === 'enroll') return this.#attest(pending.mode ?? 'token', active?.name, signal);
    if (!active) return this.#attest((await res.store.hasEnrolled()) ? 'reattest' : 'token', undefined, signal);
    this.#identity = active;
    if (this.#unusable) {
      this.#unusable = false;
      // Paced (and never reset in this process), so a broker that refuses every identity cannot drive
      // re-attestation in a loop.
      await this.#idle(this.#unusableBackoff.next(), signal);
      return this.#attest('reattest', active.name, signal);
    }
    // 3. Judge the identity by the clock floor, never by a clock that runs behind it.
    const judged = this.#judge();
    const window = windowOf(active.slot);
    const phase = identityPhase(judged, window, this.#phasePolicy(window), this.deviceId);
    if (phase === 'expired' || phase === 'expiring') {
      this.#log('warn', 'identity expired or about to; re-attesting', { serial: active.slot.serial, phase });
      return this.#attest('reattest', active.name, signal);
    }
    // 4. Connected with it; after a rollback, tell the bridge to retire the refused certificate.
    if (!(await this.#connect(signal))) return;
    if (this.#retire) await this.#confirmSerial(this.#retire, signal);
    // 5. A fleet command that is due (operator rotate-now or reattest), once per command id. It is
    // marked done only once its action ran: a crash before the action stored its own record leaves the
    // command scheduled (run again after the restart); a crash after it leaves a pending record, which
    // #open takes as the command under way.
    const command = this.#command;
    if (command && judged >= command.at) {
      this.#command = undefined;
      this.#log('info', 'running a fleet command', { id: command.id, command: command.command, by: command.by });
      if (command.command === 'reattest') {
        await this.#attest('reattest', active.name, signal);
        await this.#commands?.started(command.id);
        return;
      }
      this.#rotateRequested = true;
      this.#rotationNotBefore = 0;
      this.#commandRotation = command.id;
    }
    // 6. Rotation when asked, due by time, or left half-done; after a failure not before its backoff
    // ran out (rotateNow() clears that).
    const due = (phase === 'renew' || this.#rotateRequested || pending?.kind === 'rotate') && this.#clock.now() >= this.#rotationNotBefore;
    if (due) return this.#rotate(active, pending?.kind === 'rotate' ? pending : undefined, signal);
    // 7. Nothing to do until the next decision (the clock against the fleet's when that is due).
    this.#checkFleetClock(false);
    this.#phase = 'idle until the next decision';
    let wakeMs = nextWakeMs(judged, window, this.#phasePolicy(window), this.deviceId, this.#config.tickMs);
    const retryIn = this.#rotationNotBefore - this.#clock.now();
    if ((phase === 'renew' || this.#rotateRequested) && retryIn > 0) wakeMs = Math.min(wakeMs, retryIn);
    if (this.#command) wakeMs = Math.min(wakeMs, Math.max(0, this.#command.at - judged));
    await this.#idle(wakeMs, signal, 'tick');
  }

  /** Connects the device link with the current identity; false when it should be retried later. */
  async #connect(signal: AbortSignal): Promise<boolean> {
    const link = this.#deviceLink();
    if (link.connected) {
      this.#set('online');
      return true;
    }
    this.#set('connecting');
    link.setIdentity(this.#linkIdentity(this.#identity!));
    try {
      await link.ensureConnected(signal);
    } catch (e) {
      if (!(e instanceof LinkRefusedError)) throw e;
      this.#refusals++;
      this.#log('warn', 'the broker refused our identity', { code: e.transportCode, refusals: this.#refusals, serial: this.#identity?.slot.serial });
      if (this.#refusals >= REFUSALS_BEFORE_REATTEST) {
        // Unexpired yet refused: the identity is unusable (e.g. the fleet's CA changed). Re-attestation
        // proves the device again; the bridge refuses it for a revoked device.
        this.#refusals = 0;
        await this.#attest('reattest', this.#identity?.name, signal);
        return false;
      }
      await this.#idle(this.#refusalBackoff.next(), signal);
      return false;
    }
    this.#refusals = 0;
    this.#refusalBackoff.reset();
    this.#online();
    return true;
  }

  /** State online; the first time in this process also logs `online` and resolves start(). */
  #online(): void {
    this.#set('online');
    if (!this.#announced) {
      this.#announced = true;
      this.#log('info', 'online', { serial: this.#identity?.slot.serial, slot: this.#identity?.name });
    }
    this.#firstOnline?.resolve();
  }

  // ---- enrollment and re-attestation -------------------------------------------------------------

  async #attest(mode: 'token' | 'reattest', retire: 'A' | 'B' | undefined, signal: AbortSignal): Promise<void> {
    const res = this.#res!;
    const cfg = this.#o.bootstrap;
    this.#set(mode === 'token' ? 'enrolling' : 'reattesting');
    // The device connection, if any, goes: the identity it uses is being replaced. Its retained status
    // says so first (a graceful close sends no last will).
    await this.#publishStatus(false).catch(() => undefined);
    await this.#device?.close();
    this.#device = undefined;
    if (mode === 'token' && this.#clock.now() >= cfg.tokenExpiresAt) {
      // The bridge decides with its own clock; a device clock can be wrong, so only say so.
      this.#log('warn', 'the enrollment token looks expired by this device clock', { tokenExpiresAt: cfg.tokenExpiresAt });
    }
    const trust = mode === 'reattest' ? ((await res.store.getTrustBundle()) ?? cfg.trustBundle) : cfg.trustBundle;
    // A random per-attempt client id (kept in `pending` across restarts): on this listener nobody,
    // this device included, can claim a device id; the token and the EK vouch for it in the payload.
    const clientId = await enrollClientIdFor(res.store, mode);
    const link = new MqttLink({
      name: 'enroll',
      url: cfg.enrollUrl,
      clientId,
      ca: trust,
      transportFactory: (opts) => this.#transport(opts, 'enroll'),
      backoff: this.#newBackoff(),
      sleep: this.#sleep,
      clock: this.#clock,
      log: (level, msg, fields) => this.#log(level, msg, fields),
    });
    this.#enrollLink = link;
    const ak = await res.tpm.loadKey(res.srk, fromStored(res.ak.blobs));
    let result: EnrollmentResult;
    try {
      result = await enroll({
        tpm: res.tpm,
        srk: res.srk,
        ak,
        store: res.store,
        link,
        clientId,
        mode,
        ...(retire ? { retire } : {}),
        trustBundle: trust,
        // Queued before the identity is stored, under an id derived from the serial: a crash between
        // the two neither loses the event nor, when the restart stores the same certificate, doubles it.
        onIssued: async (identity, slot) => {
          await this.#emit({ id: `${mode === 'token' ? 'enrolled' : 'reattested'}-${identity.serial}`, type: mode === 'token' ? 'enrolled' : 'reattested', serial: identity.serial, slot });
        },
        topics: this.#topics,
        config: cfg,
        clock: this.#clock,
        sleep: this.#sleep,
        signal,
        backoff: this.#newBackoff(),
        ...(this.#o.responseTimeoutMs === undefined ? {} : { responseTimeoutMs: this.#o.responseTimeoutMs }),
        ...(this.#o.maxAttempts === undefined ? {} : { maxAttempts: this.#o.maxAttempts }),
        log: (msg, fields) => this.#log('info', msg, fields),
      });
    } finally {
      this.#enrollLink = undefined;
      await link.close();
      await res.tpm.flush(ak).catch(() => undefined);
    }
    // Loaded again for each handshake only.
    await res.tpm.flush(result.key).catch(() => undefined);
    this.#enrollment = result;
    this.#identity = { name: result.slot, slot: result.identity };
    this.#trust = result.trustBundle;
    this.#rotationNotBefore = 0;
    await this.#advanceFloor(windowOf(result.identity).notBefore);
    this.#retire = undefined;
    await this.#fleet?.writeSnapshot();
  }

  // ---- rotation ----------------------------------------------------------------------------------

  #rotationDeps(signal: AbortSignal, trustBundle: readonly string[]): RotationDeps {
    const res = this.#res!;
    return {
      tpm: res.tpm,
      srk: res.srk,
      ak: res.ak,
      store: this.#commandRotation === undefined ? res.store : this.#storeMarkingCommand(res.store, this.#commandRotation),
      link: this.#deviceLink(),
      topics: this.#topics,
      deviceId: this.deviceId,
      trustBundle,
      clock: this.#clock,
      sleep: this.#sleep,
      backoff: this.#newBackoff(),
      responseTimeoutMs: this.#o.responseTimeoutMs ?? 15_000,
      signal,
      log: (msg, fields) => this.#log('info', msg, fields),
    };
  }

  /**
   * The store for a rotation a fleet command asked for: once the rotation's pending record is stored
   * (from then on it survives a crash by itself), the command is marked done, so it runs exactly once.
   */
  #storeMarkingCommand(store: AgentStore, id: string): AgentStore {
    return new Proxy(store, {
      get: (target, key) => {
        if (key === 'putPending') {
          return async (p: Parameters<AgentStore['putPending']>[0]) => {
            await target.putPending(p);
            if (this.#commandRotation === id) {
              this.#commandRotation = undefined;
              await this.#commands?.started(id);
            }
          };
        }
        const v: unknown = Reflect.get(target, key, target);
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  }

  async #rotate(active: ActiveIdentity, resume: PendingRotation | undefined, signal: AbortSignal): Promise<void> {
    const res = this.#res!;
    this.#set('rotating');
    await this.#publishStatus(true).catch(() => undefined);
    const signaturesBefore = res.signatures();
    const handshakesBefore = this.#handshakes;
    const trust = (await res.store.getTrustBundle()) ?? this.#o.bootstrap.trustBundle;
    const out = await requestRotation(this.#rotationDeps(signal, trust), active, resume);
    if (out.kind === 'refused') {
      // Nothing was certified. A retryable refusal keeps the new key (and its CSR) for the next try;
      // otherwise its blob goes with the pending record (the key is not loaded).
      if (out.reaction !== 'retry') await res.store.deletePending();
      if (out.reaction === 'reattest') return this.#attest('reattest', active.name, signal);
      if (out.code === 'DEVICE_REVOKED') throw new EnrollmentError('AGENT_ENROLLMENT_REJECTED', 'the fleet says this device is revoked', { rejection: out.code });
      const waitMs = out.retryAfterSec !== undefined ? out.retryAfterSec * 1000 : this.#rotationBackoff.next();
      this.#rotationNotBefore = this.#clock.now() + waitMs;
      await this.#rotationFailed(active.slot.serial, undefined, out.code);
      this.#log('warn', 'rotation refused by the fleet; keeping the current identity', { code: out.code, retryInMs: waitMs });
      this.#set(this.#device?.connected ? 'online' : 'connecting');
      await this.#publishStatus(true).catch(() => undefined);
      return;
    }
    await this.#trial(out.pending, signal, { signaturesBefore, handshakesBefore });
  }

  /** Connects with the newly issued identity; commits it when the broker takes it, rolls back when refused. */
  async #trial(p: PendingRotation, signal: AbortSignal, cost?: { signaturesBefore: number; handshakesBefore: number }): Promise<void> {
    const res = this.#res!;
    const old = await res.store.active();
    const fresh = await res.store.getSlot(p.slot);
    if (!old || !fresh) throw new AgentStoreError('AGENT_STATE_CORRUPT', 'rotation trial without both identities');
    this.#set('rotating');
    const link = this.#deviceLink();
    // Graceful: no last will. The retained status says `rotating` until the new session replaces it.
    await link.disconnect({ graceful: true });
    this.#identity = { name: p.slot, slot: fresh };
    link.setIdentity(this.#linkIdentity(this.#identity));
    for (;;) {
      try {
        this.#phase = 'rotation trial: connecting with the new identity';
        await link.connectOnce();
        break;
      } catch (e) {
        if (e instanceof LinkRefusedError) return this.#rollback(p, old, e.transportCode);
        if (signal.aborted) throw abortError();
        // The broker is away: stay in trial and try again; nothing is decided until it answers.
        await this.#idle(this.#stepBackoff.next(), signal);
      }
    }
    const committed = await res.store.rotationCommitted(p);
    await this.#fleet?.writeSnapshot();
    await this.#advanceFloor(windowOf(fresh).notBefore);
    if (cost) this.#lastRotationSignatures = res.signatures() - cost.signaturesBefore + (this.#handshakes - cost.handshakesBefore);
    await this.#confirm(committed, signal);
  }

  async #rollback(p: PendingRotation, old: ActiveIdentity, code: string): Promise<void> {
    const res = this.#res!;
    this.#log('warn', 'the broker refused the new certificate; rolling back to the old identity', { code, serial: p.serial, keep: old.slot.serial });
    await this.#rotationFailed(old.slot.serial, p.serial, code);
    await res.store.rotationAbandoned(p, code, this.#clock.now());
    this.#identity = old;
    this.#deviceLink().setIdentity(this.#linkIdentity(old));
    this.#rotationNotBefore = this.#clock.now() + this.#rotationBackoff.next();
    // Once back on the old identity, the bridge retires the refused certificate (confirm of the old one).
    if (p.serial) this.#retire = { serial: old.slot.serial, previousSerial: p.serial };
  }

  async #rotationFailed(serial: string, attempted: string | undefined, code: string): Promise<void> {
    this.#lastRotation = { at: this.#clock.now(), result: code };
    // A rolled-back certificate gives the event a stable id (it is queued before the rollback is stored).
    await this.#emit({ ...(attempted ? { id: `rotfail-${attempted}` } : {}), type: 'rotation_failed', code, serial, ...(attempted ? { previousSerial: attempted } : {}) });
    await this.#res!.store.putLastRotation(this.#lastRotation);
  }

  /** The bridge retires the old certificate; then the old key blob goes (the key was never kept loaded). */
  async #confirm(p: PendingRotation, signal: AbortSignal): Promise<void> {
    const res = this.#res!;
    const backoff = this.#newBackoff();
    for (;;) {
      if (p.phase !== 'confirming' || !p.serial) throw new AgentStoreError('AGENT_STATE_CORRUPT', `cannot confirm a rotation in phase ${p.phase}`);
      const out = await confirmRotation(this.#rotationDeps(signal, []), { serial: p.serial, previousSerial: p.fromSerial });
      if (out.kind === 'confirmed') break;
      if (out.reaction === 'retry') {
        await this.#idle(out.retryAfterSec !== undefined ? out.retryAfterSec * 1000 : backoff.next(), signal);
        continue;
      }
      if (out.code === 'DEVICE_REVOKED') throw new EnrollmentError('AGENT_ENROLLMENT_REJECTED', 'the fleet says this device is revoked', { rejection: out.code });
      // The new identity works and is active; the bridge keeps the old certificate until it expires.
      this.#log('warn', 'the fleet did not confirm the rotation; the old certificate stays until it expires', { code: out.code });
      break;
    }
    const at = this.#clock.now();
    // Queued before the rotation is marked finished, with an id derived from the serial (see #attest).
    await this.#emit({ id: `rotated-${p.serial!}`, type: 'rotated', serial: p.serial!, previousSerial: p.fromSerial, slot: p.slot });
    await res.store.rotationFinished(p, at);
    this.#lastRotation = { at, result: 'ok' };
    this.#rotations++;
    this.#rotateRequested = false;
    this.#finishing = false;
    this.#rotationBackoff.reset();
    this.#rotationNotBefore = 0;
    this.#log('info', 'rotated', { serial: p.serial, previous: p.fromSerial, slot: p.slot });
    this.#online();
    await this.#publishStatus(true).catch(() => undefined);
  }

  /** Asks the bridge to retire every certificate but `serial` (after a rollback: the refused one). */
  async #confirmSerial(r: { readonly serial: string; readonly previousSerial: string }, signal: AbortSignal): Promise<void> {
    const out = await confirmRotation(this.#rotationDeps(signal, []), r);
    if (out.kind === 'refused' && out.reaction === 'retry') return; // kept: tried again on the next pass
    if (out.kind === 'refused') this.#log('warn', 'the fleet did not retire the refused certificate', { code: out.code, serial: r.previousSerial });
    if (out.kind === 'refused' && out.code === 'DEVICE_REVOKED') throw new EnrollmentError('AGENT_ENROLLMENT_REJECTED', 'the fleet says this device is revoked', { rejection: out.code });
    this.#retire = undefined;
  }

  // ---- the device connection ---------------------------------------------------------------------

  #deviceLink(): MqttLink {
    if (this.#device) return this.#device;
    const link = new MqttLink({
      name: 'device',
      url: this.#o.bootstrap.deviceUrl,
      // The broker requires the `enr-` prefix and names the session by the certificate CN (the device id).
      clientId: `${CLIENT_ID_PREFIX}${this.deviceId}`,
      // The bundle from the accepted enrollment (or a signed update since) supersedes the bootstrap one.
      ca: () => this.#trust ?? this.#o.bootstrap.trustBundle,
      transportFactory: (opts) => this.#transport(opts, 'device'),
      backoff: this.#newBackoff(),
      sleep: this.#sleep,
      clock: this.#clock,
      log: (level, msg, fields) => this.#log(level, msg, fields),
      will: () => ({ topic: this.#topics.device(this.deviceId, 'status'), payload: this.#statusPayload(false), qos: 1, retain: true }),
      onUp: async (t) => {
        this.#handshakes++;
        await t.publish(this.#topics.device(this.deviceId, 'status'), this.#statusPayload(true), { qos: 1, retain: true });
        await this.#eventAcks.subscribe(t);
        void this.#drainOutbox();
        await this.#fleet?.subscribe(t);
        await this.#commands?.subscribe(t);
        this.#checkFleetClock(true);
      },
      onDown: () => {
        if (this.#state === 'online') this.#set('connecting');
        this.#poke();
      },
    });
    this.#device = link;
    return link;
  }

  #linkIdentity(id: ActiveIdentity): LinkIdentity {
    const res = this.#res!;
    return {
      label: `certificate ${id.slot.serial}`,
      prepare: async () => {
        const key = await res.tpm.loadKey(res.srk, fromStored(id.slot.key));
        let tls;
        try {
          tls = res.tpm.tlsKey(key);
        } catch (e) {
          await res.tpm.flush(key).catch(() => undefined);
          throw e;
        }
        return {
          tls: { cert: [id.slot.certificate, ...id.slot.chain].join('\n'), ...tls },
          release: async () => {
            try {
              res.tpm.releaseTlsKey(tls);
            } finally {
              await res.tpm.flush(key);
            }
          },
        };
      },
    };
  }

  #transport(opts: MqttTransportOptions, purpose: TransportPurpose): Transport {
    return this.#o.transportFactory ? this.#o.transportFactory(opts, purpose) : new MqttTransport(opts);
  }

  #statusPayload(online: boolean): Buffer {
    const now = this.#clock.now();
    const res = this.#res;
    const body = statusBody({
      deviceId: this.deviceId,
      state: this.#state,
      online,
      ...(this.#identity ? { identity: this.#identity } : {}),
      ...(this.#lastRotation ? { lastRotation: this.#lastRotation } : {}),
      clockSkewMs: this.#reportedSkewMs(now),
      ...(this.#error ? { errorCode: this.#error.rejection ?? this.#error.code } : {}),
      agentVersion: this.#o.agentVersion ?? AGENT_VERSION,
      ...(res?.tpmInfo ? { tpm: res.tpmInfo } : {}),
      ...(res ? { outbox: { pending: res.outbox.pending(), dropped: res.outbox.dropped() } } : {}),
      ...this.#fleetAcknowledgement(),
    });
    return encode('status', `status-${now}`, now, body);
  }

  /**
   * The retained status says what the device holds now (CRL number, trust bundle version): sent after a
   * random delay up to `revocation.reportDelayMs`, coalesced, so one revocation does not make every
   * device of a fleet publish at once. Best effort: the next status says it anyway.
   */
  #scheduleStatusReport(): void {
    if (this.#statusReport) return;
    const delay = Math.floor((this.#o.random ?? Math.random)() * this.#config.revocation.reportDelayMs);
    this.#statusReport = setTimeout(() => {
      this.#statusReport = undefined;
      void this.#publishStatus(true).catch(() => undefined);
    }, delay);
    this.#statusReport.unref();
  }

  async #publishStatus(online: boolean): Promise<void> {
    const t = this.#device?.transport;
    if (!t) return;
    await t.publish(this.#topics.device(this.deviceId, 'status'), this.#statusPayload(online), { qos: 1, retain: true });
  }

  // ---- fleet topics: CRL and trust bundle -------------------------------------------------------

  #fleetCommands(store: AgentStore): FleetCommands {
    return new FleetCommands(
      {
        topics: this.#topics,
        deviceId: this.deviceId,
        judgedNow: () => this.#judgeQuiet(),
        random: this.#o.random ?? Math.random,
        schedule: (c) => {
          this.#command = c;
          this.#poke();
        },
        log: (level, msg, fields) => this.#log(level, msg, fields),
      },
      store.sublevel('commands'),
    );
  }

  #fleetUpdates(store: AgentStore, cache: RevocationCache, trustVersion: number | undefined): FleetUpdates {
    return new FleetUpdates(
      {
        topics: this.#topics,
        dataDir: this.#o.dataDir,
        crlGraceSec: this.#config.revocation.graceSec,
        cache,
        identity: () => this.#identity,
        trust: () => this.#trust ?? this.#o.bootstrap.trustBundle,
        clockFloor: () => this.#floor,
        judgedNow: () => this.#judgeQuiet(),
        replaceTrust: async (roots, version) => {
          await store.putTrustBundle(roots, version);
          this.#trust = roots;
        },
        advanceFloor: (t) => this.#advanceFloor(t),
        ownCertificateRevoked: (serial, reason) => {
          // Park at the next step, which the poke starts at once.
          this.#revokedByCrl = { serial, ...(reason ? { reason } : {}) };
          this.#poke();
        },
        log: (level, msg, fields) => this.#log(level, msg, fields),
        changed: () => {
          this.#notifyCrl();
          this.#scheduleStatusReport();
        },
      },
      { trustVersion },
    );
  }

  /** Queues the `revoked` event and gives it a bounded chance to leave while the session may still exist. */
  async #announceRevoked(): Promise<void> {
    const serial = this.#identity?.slot.serial;
    try {
      await this.#emit({
        ...(serial ? { id: `revoked-${serial}`, serial } : {}),
        type: 'revoked',
        code: this.#error?.rejection ?? this.#error?.code ?? 'DEVICE_REVOKED',
        ...(this.#error ? { message: this.#error.message.slice(0, 256) } : {}),
      });
    } catch (e) {
      this.#log('warn', 'could not queue the revoked event', { code: isCodedError(e) ? e.code : undefined });
      return;
    }
    await Promise.race([this.#drainOutbox(), new Promise((r) => setTimeout(r, 2_000).unref())]);
  }

  // ---- events ------------------------------------------------------------------------------------

  async #emit(e: NewEvent): Promise<boolean> {
    const res = this.#res;
    if (!res) return false;
    const queued = await res.outbox.enqueue(e);
    if (!queued) this.#log('warn', 'outbox full; event dropped', { type: e.type });
    void this.#drainOutbox();
    return queued !== undefined;
  }

  /** Sends queued events in order over the device connection; each is removed only after its PUBACK. */
  #drainOutbox(): Promise<void> {
    if (this.#draining) return this.#draining;
    const run = this.#drainLoop()
      .catch((e: unknown) => this.#log('warn', 'outbox drain failed', { code: isCodedError(e) ? e.code : undefined }))
      .finally(() => {
        if (this.#draining === run) this.#draining = undefined;
      });
    this.#draining = run;
    return run;
  }

  async #drainLoop(): Promise<void> {
    for (;;) {
      const res = this.#res;
      const t = this.#device?.transport;
      if (!res || !t || res.outbox.pending() === 0) return;
      const topic = this.#topics.device(this.deviceId, 'events');
      const acks = this.#eventAcks;
      const ackTimeoutMs = this.#o.responseTimeoutMs ?? 15_000;
      // An event leaves the outbox when the bridge says it is in the inventory (event-acks.ts).
      const r = await res.outbox.drain(async (ev) => {
        const acked = acks.expect(ev.id, ackTimeoutMs);
        acked.catch(() => undefined);
        try {
          await t.publish(topic, encode('events', ev.id, this.#clock.now(), eventBody(ev)), { qos: 1 });
        } catch (e) {
          acks.forget(ev.id);
          throw e;
        }
        await acked;
      });
      if (r.error !== undefined) {
        const code = isCodedError(r.error) ? r.error.code : undefined;
        if (code === 'AGENT_EVENT_UNACKED') {
          // Connected, but the bridge is away or lost it: try again after a pause, not only on reconnect.
          const retryMs = this.#ackBackoff.next();
          this.#log('info', 'events not acknowledged by the bridge; sending them again later', { sent: r.sent, retryMs });
          setTimeout(() => void this.#drainOutbox(), retryMs).unref();
          return;
        }
        this.#ackBackoff.reset();
        this.#log('info', 'outbox drain interrupted; the rest goes on the next connection', { sent: r.sent, code });
        if (code === 'TRANSPORT_PUBLISH_REFUSED') {
          this.#unusable = true; // see #supervise
          this.#poke();
        }
        return;
      }
      this.#ackBackoff.reset();
      if (r.sent === 0) return;
    }
  }

  // ---- time --------------------------------------------------------------------------------------

  /**
   * The budget's grace is declared for its lifetime; a certificate with another lifetime (the fleet's
   * policy is the fleet's) gets the grace scaled to it, so renewal window and grace keep their proportions.
   */
  #phasePolicy(cert?: { notBefore: number; notAfter: number }): PhasePolicy {
    const b = this.#config.offlineBudget;
    if (!cert) return b;
    const lifetimeSec = (cert.notAfter - cert.notBefore) / 1000;
    if (Math.abs(lifetimeSec - b.lifetimeSec) <= b.lifetimeSec * 0.01) return b;
    if (!this.#lifetimeWarned) {
      this.#lifetimeWarned = true;
      this.#log('info', 'certificate lifetime differs from the offline budget; scaling the grace to it', { lifetimeSec, budgetLifetimeSec: b.lifetimeSec });
    }
    return { ...b, graceSec: (b.graceSec * lifetimeSec) / b.lifetimeSec };
  }

  #notifyCrl(): void {
    const n = this.#res?.revocation.crlNumber()?.toString();
    if (n === undefined || n === this.#crlNotified) return;
    this.#crlNotified = n;
    for (const l of this.#crlListeners) {
      try {
        l(n);
      } catch {
        // a listener's failure is its own
      }
    }
  }

  /** Judged time without the once-per-run skew report (status and peer verification). */
  #judgeQuiet(): number {
    return judgeNow(this.#clock.now(), this.#floor).now;
  }

  /** Now for validity decisions: never below the floor; a clock behind it is reported once per run. */
  #judge(): number {
    const j = judgeNow(this.#clock.now(), this.#floor);
    if (j.behindMs > 0 && !this.#skewReported) {
      this.#skewReported = true;
      this.#log('warn', 'the system clock is behind the newest trusted time; judging validity by that time instead', { behindMs: j.behindMs });
      this.#emit({ type: 'clock_skew', skewMs: -j.behindMs, code: 'CLOCK_BEHIND_FLOOR' }).catch((e: unknown) => this.#log('warn', 'could not queue the clock_skew event', { code: isCodedError(e) ? e.code : undefined }));
    }
    if (j.behindMs === 0) this.#skewReported = false;
    return j.now;
  }

  /**
   * Device clock minus fleet clock as far as the agent knows it beyond tolerance, else 0: a clock behind
   * the floor by that much at least; a measurement against the fleet (either way) when it showed more
   * than CLOCK_TOLERANCE_MS; the larger of the two when both say behind.
   */
  #reportedSkewMs(now: number): number {
    const behind = judgeNow(now, this.#floor).behindMs;
    const m = this.#fleetSkew;
    const measured = m && beyondTolerance(m) ? m.skewMs : 0;
    return behind > 0 ? Math.min(-behind, measured) : measured;
  }

  /**
   * Measures the clock against the fleet's on a new connection (`force`) and then every
   * `clockCheckSec`, in the background. A skew beyond tolerance is logged and sent as one `clock_skew`
   * event (code CLOCK_SKEW_FLEET) until a measurement finds the clock back within it; the status carries
   * it (#reportedSkewMs). No answer (bridge away) leaves the last measurement as it was.
   */
  #checkFleetClock(force: boolean): void {
    if (this.#clockCheck) return;
    const t = this.#device?.transport;
    const last = this.#clockCheckAt;
    const everyMs = this.#config.clockCheckSec * 1000;
    if (!t || (!force && (everyMs === 0 || (last !== undefined && Math.abs(this.#clock.now() - last) < everyMs)))) return;
    this.#clockCheckAt = this.#clock.now();
    const run = (async () => {
      const sample = await askFleetTime(t, { topics: this.#topics, deviceId: this.deviceId, clock: this.#clock, timeoutMs: this.#o.responseTimeoutMs ?? 15_000 });
      if (!sample) {
        this.#log('info', 'no answer from the fleet time service; clock not measured this time');
        return;
      }
      const skew = skewOf(sample);
      const wasBeyond = this.#fleetSkew !== undefined && beyondTolerance(this.#fleetSkew);
      this.#fleetSkew = { ...skew, at: sample.receivedAt };
      const beyond = beyondTolerance(skew);
      if (beyond && !this.#fleetSkewReported) {
        this.#fleetSkewReported = true;
        this.#log('warn', 'the system clock differs from the fleet clock', { skewMs: skew.skewMs, uncertaintyMs: skew.uncertaintyMs });
        // A clock behind whose floor event already went out is the same episode: one event, not two.
        // (Not a return: the status report below is still due when the measurement crossed tolerance.)
        const sameEpisode = skew.skewMs < 0 && this.#skewReported;
        if (!sameEpisode) {
          await this.#emit({ type: 'clock_skew', skewMs: skew.skewMs, code: 'CLOCK_SKEW_FLEET' }).catch((e: unknown) =>
            this.#log('warn', 'could not queue the clock_skew event', { code: isCodedError(e) ? e.code : undefined }),
          );
        }
      }
      if (!beyond) this.#fleetSkewReported = false;
      if (beyond !== wasBeyond) this.#scheduleStatusReport();
    })()
      .catch((e: unknown) => this.#log('warn', 'clock check failed', { code: isCodedError(e) ? e.code : undefined, err: (e as Error).message }))
      .finally(() => {
        this.#clockCheck = undefined;
      });
    this.#clockCheck = run;
  }

  async #advanceFloor(trusted: number): Promise<void> {
    const next = advanceFloor(this.#floor, trusted);
    if (next === this.#floor) return;
    this.#floor = next;
    await this.#res?.store.putClockFloor(next);
  }

  /** Ends the current idle wait, or the next one before it starts. */
  #poke(): void {
    if (this.#wake) this.#wake();
    else this.#woken = true;
  }

  /**
   * Waits up to `ms` (Infinity: until stopped); `wake()` (connection change, rotateNow, stop) ends it
   * early. A `retry` wait goes through the injected sleep (tests shorten backoff); a `tick` (nothing to
   * do until the next timing decision) always waits on a real timer and re-reads the injected clock after.
   */
  async #idle(ms: number, signal: AbortSignal, kind: 'retry' | 'tick' = 'retry'): Promise<void> {
    if (signal.aborted) throw abortError();
    // Something happened since the last step (a wake with nobody idle): decide again at once.
    if (this.#woken) {
      this.#woken = false;
      return;
    }
    const wake = new AbortController();
    this.#wake = () => wake.abort();
    const onStop = () => wake.abort();
    signal.addEventListener('abort', onStop, { once: true });
    try {
      const waitMs = Number.isFinite(ms) ? Math.min(ms, 2 ** 31 - 1) : 2 ** 31 - 1;
      await (kind === 'tick' ? this.#waitOn(realSleep(waitMs, wake.signal)) : this.#sleep(waitMs, wake.signal)).catch(() => undefined);
    } finally {
      signal.removeEventListener('abort', onStop);
      this.#wake = undefined;
    }
    if (signal.aborted) throw abortError();
  }

  /** A timed wait, counted for liveness(). */
  async #waitOn(wait: Promise<void>): Promise<void> {
    this.#moves++;
    this.#waits++;
    try {
      await wait;
    } finally {
      this.#waits--;
      this.#moves++;
    }
  }

  // ---- state -------------------------------------------------------------------------------------

  #isFinal(e: unknown): boolean {
    if (e instanceof EnrollmentError) return e.code === 'AGENT_ENROLLMENT_REJECTED' || e.code === 'AGENT_ENROLLMENT_GAVE_UP' || e.code === 'AGENT_NO_EK_CERTIFICATE';
    return isCodedError(e) && (e.code === 'AGENT_STATE_CORRUPT' || e.code === 'AGENT_CONFIG_INVALID' || e.code === 'AGENT_REVOKED');
  }

  #fail(e: unknown): void {
    const rejection = e instanceof EnrollmentError ? e.rejection : e instanceof AgentRevokedError ? 'DEVICE_REVOKED' : undefined;
    this.#error = {
      code: isCodedError(e) ? e.code : 'AGENT_INTERNAL',
      ...(rejection ? { rejection } : {}),
      message: (e as Error).message,
    };
    this.#log('error', rejection === 'DEVICE_REVOKED' ? 'this device is revoked; stopped using its identity' : 'agent stopped making progress; waiting for an operator', {
      code: this.#error.code,
      rejection,
      err: this.#error.message,
    });
    this.#set(rejection === 'DEVICE_REVOKED' ? 'revoked' : 'error');
    this.#firstOnline?.reject(e);
  }

  #newBackoff(): Backoff {
    return new Backoff({ ...this.#config.backoff, ...(this.#o.random ? { random: this.#o.random } : {}) });
  }

  #set(state: AgentState): void {
    if (this.#state === state) return;
    this.#state = state;
    for (const l of this.#listeners) {
      try {
        l(state);
      } catch (e) {
        this.#log('warn', 'state listener threw', { err: (e as Error).message });
      }
    }
    if (state === 'online' || state === 'rotating' || state === 'connecting') void this.#publishStatus(true).catch(() => undefined);
  }

  #log(level: 'info' | 'warn' | 'error', msg: string, fields: Record<string, unknown> = {}): void {
    this.#o.logger?.[level]({ deviceId: this.deviceId, ...fields }, msg);
  }
}
