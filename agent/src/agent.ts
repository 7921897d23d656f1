import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { systemClock, type Clock } from '../../common/clock.js';
import { CodedError, isCodedError } from '../../common/coded-error.js';
import type { RejectionCode } from '../../common/protocol/errors.js';
import { encode, type DeviceStatus } from '../../common/protocol/messages.js';
import { DEFAULT_BASE_TOPIC, Topics } from '../../common/protocol/topics.js';
import { MqttTransport, type MqttTransportOptions } from '../../common/transport/mqtt-transport.js';
import type { Transport } from '../../common/transport/transport.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import type { TlsKeyOptions, Tpm, TpmKey } from '../../native/lib/tpm.js';
import { abortError, Backoff, sleep as realSleep, throwIfAborted, type Sleep } from './backoff.js';
import { checkTrustBundle, type BootstrapConfig } from './config.js';
import { enroll, EnrollmentError, fromStored, toStored, type EnrollmentResult } from './enrollment.js';
import { countSignatures } from './signature-counter.js';
import { AgentStore, AgentStoreError, type ActiveIdentity } from './store.js';

/**
 * The device agent. `new Agent(options)` does nothing; `start()`:
 *   1. opens the store (LevelDB in <dataDir>/state) and the TPM, takes back TPM slots a killed
 *      predecessor left loaded, ensures the SRK and the attestation key;
 *   2. enrolls if no identity is active (enrollment.ts, over the server-authenticated listener);
 *   3. connects to the device listener over mutual TLS, signing the handshake with the identity key
 *      inside the TPM, and publishes its retained status (the last will marks it offline).
 * `stop()` publishes offline, disconnects and releases TPM objects, the TPM (if it opened it) and
 * the store. No global state: a simulator runs hundreds of agents in one process.
 *
 * States: stopped → starting → [enrolling →] connecting → online; online ⇄ connecting while the
 * connection drops and comes back; any failure → error; stop() → stopping → stopped.
 */
export type AgentState = 'stopped' | 'starting' | 'enrolling' | 'connecting' | 'online' | 'stopping' | 'error';

/** pino-compatible subset (a pino logger fits). Never given the token or key blobs. */
export interface AgentLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export type TransportPurpose = 'enroll' | 'device';

export interface AgentOptions {
  readonly bootstrap: BootstrapConfig;
  readonly dataDir: string;
  readonly clock?: Clock;
  readonly logger?: AgentLogger;
  /** An already open TPM (the agent then does not close it); default: NativeTpm.open(bootstrap.tcti). */
  readonly tpm?: Tpm;
  /** How transports are made (tests, simulator); default: MqttTransport. */
  readonly transportFactory?: (opts: MqttTransportOptions, purpose: TransportPurpose) => Transport;
  /** Waits between retries; tests inject one that advances a manual clock. */
  readonly sleep?: Sleep;
  /** Jitter source in [0, 1); default Math.random. */
  readonly random?: () => number;
  /** Wait for each enrollment answer before re-publishing. Default 15 000. */
  readonly responseTimeoutMs?: number;
  /** Failed enrollment attempts (rejections, timeouts) and failed connects before giving up. Default 20. */
  readonly maxAttempts?: number;
  readonly agentVersion?: string;
}

export interface AgentStatus {
  readonly deviceId: string;
  readonly state: AgentState;
  readonly slot?: 'A' | 'B';
  readonly certSerial?: string;
  readonly certNotAfter?: number;
  /** TPM signing operations this agent asked for outside TLS handshakes (CSR, certify). */
  readonly tpmSignatures: number;
  /** Completed mutual-TLS connects; each costs one TPM signature (CertificateVerify). */
  readonly tlsHandshakes: number;
  /** The enrollment this agent ran, if it had to enroll. */
  readonly enrollment?: { readonly tpmSignatures: number; readonly messagesSent: number; readonly resumed: boolean };
  /** Why the agent is in state `error`. */
  readonly error?: { readonly code: string; readonly rejection?: RejectionCode; readonly message: string };
}

export type AgentErrorCode = 'AGENT_STATE_CORRUPT' | 'AGENT_STOPPED' | 'AGENT_CONNECT_FAILED';

/** Connect failures a later attempt can outlive; TLS and authorization failures need a human. */
const TRANSIENT_CONNECT = new Set(['TRANSPORT_UNREACHABLE', 'TRANSPORT_TIMEOUT', 'TRANSPORT_CONNECTION_LOST', 'TRANSPORT_NOT_CONNECTED']);

export class Agent {
  readonly #o: AgentOptions;
  readonly #clock: Clock;
  readonly #sleep: Sleep;
  #state: AgentState = 'stopped';
  #abort: AbortController | undefined;
  #starting: Promise<void> | undefined;
  #store: AgentStore | undefined;
  #tpm: Tpm | undefined;
  #ownsTpm = false;
  #signatures: () => number = () => 0;
  #signaturesBefore = 0;
  #loaded: TpmKey[] = [];
  #tls: TlsKeyOptions | undefined;
  #enrollTransport: Transport | undefined;
  #transport: Transport | undefined;
  #everOnline = false;
  #identity: ActiveIdentity | undefined;
  #enrollment: EnrollmentResult | undefined;
  #handshakes = 0;
  #error: AgentStatus['error'];
  readonly #listeners = new Set<(s: AgentState) => void>();

  constructor(options: AgentOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
    this.#sleep = options.sleep ?? realSleep;
  }

  get state(): AgentState {
    return this.#state;
  }

  get deviceId(): string {
    return this.#o.bootstrap.deviceId;
  }

  /** Calls `listener` on every state change; returns the function that removes it. */
  onStateChange(listener: (s: AgentState) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  status(): AgentStatus {
    const id = this.#identity;
    const e = this.#enrollment;
    return {
      deviceId: this.deviceId,
      state: this.#state,
      ...(id ? { slot: id.name, certSerial: id.slot.serial, certNotAfter: id.slot.notAfter } : {}),
      tpmSignatures: this.#signaturesBefore + this.#signatures(),
      tlsHandshakes: this.#handshakes,
      ...(e ? { enrollment: { tpmSignatures: e.tpmSignatures, messagesSent: e.messagesSent, resumed: e.resumed } } : {}),
      ...(this.#error ? { error: this.#error } : {}),
    };
  }

  /** Resolves once online; rejects (state `error`) with a coded error. */
  async start(): Promise<void> {
    if (this.#starting) return this.#starting;
    if (this.#state !== 'stopped' && this.#state !== 'error') return;
    const abort = new AbortController();
    this.#abort = abort;
    this.#error = undefined;
    this.#set('starting');
    this.#starting = this.#start(abort.signal);
    try {
      await this.#starting;
    } finally {
      this.#starting = undefined;
    }
  }

  async #start(signal: AbortSignal): Promise<void> {
    const cfg = this.#o.bootstrap;
    try {
      checkTrustBundle(cfg);
      mkdirSync(this.#o.dataDir, { recursive: true, mode: 0o700 });
      const store = new AgentStore(join(this.#o.dataDir, 'state'));
      this.#store = store;
      await store.open();
      this.#ownsTpm = !this.#o.tpm;
      const counted = countSignatures(this.#o.tpm ?? (await NativeTpm.open(cfg.tcti)));
      this.#tpm = counted.tpm;
      this.#signatures = counted.signatures;
      const tpm = counted.tpm;
      // Without a resource manager (swtpm) a killed predecessor's objects stay loaded; free them first.
      const reclaimed = await tpm.reclaimSlots();
      if (reclaimed) this.#log('warn', 'flushed TPM objects left by a previous process', { reclaimed });
      const srk = await tpm.ensureSrk();
      this.#loaded.push(srk);
      const ak = await this.#ensureAk(srk);

      let active = await store.active();
      let key: TpmKey | undefined;
      if (!active) {
        this.#set('enrolling');
        const result = await this.#enroll(srk, ak, signal);
        this.#enrollment = result;
        key = result.key;
        this.#loaded.push(key);
        active = { name: result.slot, slot: result.identity };
      }
      // The AK is only needed for attestation: free its slot (swtpm has three).
      await this.#flush(ak);

      throwIfAborted(signal);
      this.#set('connecting');
      key ??= await this.#load(srk, active);
      this.#identity = active;
      await this.#connectDevice(active, key, signal);
      this.#set('online');
      this.#log('info', 'online', { slot: active.name, serial: active.slot.serial });
    } catch (e) {
      const err = signal.aborted ? abortError() : e;
      if (!signal.aborted) {
        this.#error = {
          code: isCodedError(err) ? err.code : 'AGENT_INTERNAL',
          ...(err instanceof EnrollmentError && err.rejection ? { rejection: err.rejection } : {}),
          message: (err as Error).message,
        };
        this.#log('error', 'agent failed to start', { code: this.#error.code, rejection: this.#error.rejection, err: this.#error.message });
      }
      await this.#release();
      this.#set(signal.aborted ? 'stopped' : 'error');
      throw err;
    }
  }

  async #ensureAk(srk: TpmKey): Promise<TpmKey> {
    const tpm = this.#tpm!;
    const stored = await this.#store!.getAk();
    if (stored) {
      const ak = await tpm.loadKey(srk, fromStored(stored.blobs));
      this.#loaded.push(ak);
      if (ak.name.toString('hex') !== stored.name) {
        throw new AgentStoreError('AGENT_STATE_CORRUPT', 'the stored attestation key loads with another TPM Name');
      }
      return ak;
    }
    const created = await tpm.createAttestationKey(srk);
    this.#loaded.push(created.key);
    await this.#store!.putAk({ blobs: toStored(created.blobs), name: created.key.name.toString('hex') });
    return created.key;
  }

  async #load(srk: TpmKey, active: ActiveIdentity): Promise<TpmKey> {
    const key = await this.#tpm!.loadKey(srk, fromStored(active.slot.key));
    this.#loaded.push(key);
    return key;
  }

  async #flush(key: TpmKey): Promise<void> {
    this.#loaded = this.#loaded.filter((k) => k !== key);
    await this.#tpm!.flush(key);
  }

  #transportFor(opts: MqttTransportOptions, purpose: TransportPurpose): Transport {
    return this.#o.transportFactory ? this.#o.transportFactory(opts, purpose) : new MqttTransport(opts);
  }

  #topics(): Topics {
    return new Topics(this.#o.bootstrap.baseTopic ?? DEFAULT_BASE_TOPIC);
  }

  async #enroll(srk: TpmKey, ak: TpmKey, signal: AbortSignal): Promise<EnrollmentResult> {
    const cfg = this.#o.bootstrap;
    if (this.#clock.now() >= cfg.tokenExpiresAt) {
      // The bridge decides with its own clock; a device clock can be wrong, so only say so.
      this.#log('warn', 'the enrollment token looks expired by this device clock', { tokenExpiresAt: cfg.tokenExpiresAt });
    }
    const backoff = this.#backoff();
    // Server-authenticated TLS only: the device has no certificate yet; the broker knows it by client id.
    const transport = this.#transportFor({ url: cfg.enrollUrl, clientId: cfg.deviceId, tls: { ca: cfg.trustBundle }, reconnectPeriodMs: 1000 }, 'enroll');
    this.#enrollTransport = transport;
    try {
      await this.#connect(transport, backoff, signal);
      return await enroll({
        tpm: this.#tpm!,
        srk,
        ak,
        store: this.#store!,
        transport,
        topics: this.#topics(),
        config: cfg,
        clock: this.#clock,
        sleep: this.#sleep,
        signal,
        backoff,
        ...(this.#o.responseTimeoutMs === undefined ? {} : { responseTimeoutMs: this.#o.responseTimeoutMs }),
        ...(this.#o.maxAttempts === undefined ? {} : { maxAttempts: this.#o.maxAttempts }),
        log: (msg, fields) => this.#log('info', msg, fields),
      });
    } finally {
      this.#enrollTransport = undefined;
      await transport.close().catch(() => undefined);
    }
  }

  async #connectDevice(active: ActiveIdentity, key: TpmKey, signal: AbortSignal): Promise<void> {
    const cfg = this.#o.bootstrap;
    this.#tls = this.#tpm!.tlsKey(key);
    const trust = (await this.#store!.getTrustBundle()) ?? cfg.trustBundle;
    const statusTopic = this.#topics().device(cfg.deviceId, 'status');
    const transport = this.#transportFor(
      {
        url: cfg.deviceUrl,
        clientId: cfg.deviceId,
        tls: { ca: trust, cert: [active.slot.certificate, ...active.slot.chain].join('\n'), ...this.#tls },
        will: { topic: statusTopic, payload: this.#statusPayload(false, 'offline'), qos: 1, retain: true },
      },
      'device',
    );
    this.#transport = transport;
    this.#everOnline = false;
    transport.onConnectionChange((up) => this.#onConnection(up));
    await this.#connect(transport, this.#backoff(), signal);
    await this.#publishStatus(true, 'enrolled');
    this.#everOnline = true;
  }

  #onConnection(up: boolean): void {
    if (up) this.#handshakes++;
    if (!this.#everOnline || (this.#state !== 'online' && this.#state !== 'connecting')) return;
    if (!up) {
      this.#set('connecting');
      return;
    }
    // The will replaced our retained status while we were away: say we are back.
    this.#publishStatus(true, 'enrolled').then(
      () => this.#set('online'),
      (e: unknown) => this.#log('warn', 'could not republish status after reconnecting', { code: isCodedError(e) ? e.code : undefined }),
    );
  }

  async #connect(transport: Transport, backoff: Backoff, signal: AbortSignal): Promise<void> {
    const maxAttempts = this.#o.maxAttempts ?? 20;
    for (let attempt = 1; ; attempt++) {
      throwIfAborted(signal);
      try {
        await transport.connect();
        return;
      } catch (e) {
        const code = isCodedError(e) ? e.code : undefined;
        if (signal.aborted) throw abortError();
        if (!code || !TRANSIENT_CONNECT.has(code) || attempt >= maxAttempts) {
          throw new CodedError<AgentErrorCode>('AGENT_CONNECT_FAILED', `cannot connect: ${(e as Error).message}`, { cause: e, details: { transportCode: code, attempt } });
        }
        const waitMs = backoff.next();
        this.#log('warn', 'connect failed; retrying', { code, waitMs });
        await this.#sleep(waitMs, signal);
      }
    }
  }

  #backoff(): Backoff {
    return new Backoff(this.#o.random ? { random: this.#o.random } : {});
  }

  #statusPayload(online: boolean, state: DeviceStatus['state']): Buffer {
    const now = this.#clock.now();
    const id = this.#identity;
    return encode('status', `status-${now}`, now, {
      deviceId: this.deviceId,
      online,
      state,
      ...(id ? { certSerial: id.slot.serial, certNotAfter: id.slot.notAfter } : {}),
      ...(this.#o.agentVersion ? { agentVersion: this.#o.agentVersion } : {}),
    });
  }

  #publishStatus(online: boolean, state: DeviceStatus['state']): Promise<void> {
    const topic = this.#topics().device(this.deviceId, 'status');
    return this.#transport!.publish(topic, this.#statusPayload(online, state), { qos: 1, retain: true });
  }

  /** Publishes offline status, disconnects, releases TPM objects and the store. Interrupts a start(). */
  async stop(): Promise<void> {
    if (this.#state === 'stopped' || this.#state === 'stopping') return;
    if (this.#starting) {
      this.#abort?.abort();
      // Closing the connections ends whatever start() is waiting for (an answer, a CONNACK).
      await this.#enrollTransport?.close().catch(() => undefined);
      await this.#transport?.close().catch(() => undefined);
      await this.#starting.catch(() => undefined);
    }
    if ((this.#state as AgentState) === 'stopped') return;
    this.#set('stopping');
    if (this.#transport?.connected) await this.#publishStatus(false, 'offline').catch(() => undefined);
    await this.#release();
    this.#set('stopped');
  }

  async #release(): Promise<void> {
    this.#signaturesBefore += this.#signatures();
    this.#signatures = () => 0;
    await this.#transport?.close().catch(() => undefined);
    this.#transport = undefined;
    if (this.#tls) this.#tpm?.releaseTlsKey(this.#tls);
    this.#tls = undefined;
    for (const k of this.#loaded.splice(0).reverse()) await this.#tpm?.flush(k).catch(() => undefined);
    if (this.#ownsTpm) await this.#tpm?.close().catch(() => undefined);
    this.#tpm = undefined;
    await this.#store?.close().catch(() => undefined);
    this.#store = undefined;
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
  }

  #log(level: 'info' | 'warn' | 'error', msg: string, fields: Record<string, unknown> = {}): void {
    this.#o.logger?.[level]({ deviceId: this.deviceId, ...fields }, msg);
  }
}
