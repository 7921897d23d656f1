import type { Clock } from '../../common/clock.js';
import { CodedError, isCodedError } from '../../common/coded-error.js';
import type { MqttTlsOptions, MqttTransportOptions } from '../../common/transport/mqtt-transport.js';
import { TransportError, type LastWill, type Transport } from '../../common/transport/transport.js';
import { abortError, throwIfAborted, type Backoff, type Sleep } from './backoff.js';
import type { Link } from './exchange.js';

/**
 * One logical MQTT connection of the agent (the enrollment listener, or the device listener over mutual
 * TLS), kept up across any outage. Every connection attempt is a fresh transport without automatic
 * reconnects, so the agent decides when to retry (capped exponential backoff, full jitter) and with which
 * identity (rotation swaps it). The identity's TPM key is loaded for the handshake only and flushed
 * right after: swtpm and TPMs without a resource manager have three object slots, and a rotation needs
 * the new key and the AK loaded at once.
 *
 * Logging: one line when the connection goes down (or the first attempt fails), one when it is back
 * (with the outage length); never one per retry.
 */
export type LinkErrorCode = 'AGENT_CONNECT_REFUSED';

/** The broker refused this identity (TLS alert or CONNACK refusal): a retry with the same identity may not help. */
export class LinkRefusedError extends CodedError<LinkErrorCode> {
  readonly transportCode: string;
  constructor(transportCode: string, message: string, cause: unknown) {
    super('AGENT_CONNECT_REFUSED', message, { cause, details: { transportCode } });
    this.transportCode = transportCode;
  }
}

/** What a connection authenticates with; `prepare` may load a TPM key that `release` flushes again. */
export interface LinkIdentity {
  readonly label: string;
  prepare(): Promise<{ readonly tls: MqttTlsOptions; release(): Promise<void> }>;
}

export type LinkLog = (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void;

export interface MqttLinkOptions {
  readonly name: 'enroll' | 'device';
  readonly url: string;
  readonly clientId: string;
  /** Trust anchors for the broker's server certificate; a function is read at every connection attempt. */
  readonly ca: readonly string[] | (() => readonly string[]);
  readonly identity?: LinkIdentity;
  readonly will?: () => LastWill;
  readonly transportFactory: (opts: MqttTransportOptions) => Transport;
  readonly backoff: Backoff;
  readonly sleep: Sleep;
  readonly clock: Clock;
  readonly log: LinkLog;
  /** After every CONNACK (first or again): publish status, drain the outbox. Failures are logged only. */
  readonly onUp?: (transport: Transport) => Promise<void>;
  /** After every loss of an established connection. */
  readonly onDown?: () => void;
}

const REFUSED = new Set(['TRANSPORT_TLS_FAILED', 'TRANSPORT_CONNECT_REFUSED']);

export class MqttLink implements Link {
  readonly #o: MqttLinkOptions;
  #identity: LinkIdentity | undefined;
  #transport: Transport | undefined;
  #connecting: Promise<Transport> | undefined;
  #downSince: number | undefined;
  #reportedDown = false;
  #everUp = false;
  #closed = false;
  #phase = 'idle';

  constructor(o: MqttLinkOptions) {
    this.#o = o;
    this.#identity = o.identity;
  }

  /** What the current connection attempt is waiting for (diagnostics when something never ends). */
  get phase(): string {
    return this.#phase;
  }

  get connected(): boolean {
    return this.#transport?.connected === true;
  }

  /** The live transport, if connected. */
  get transport(): Transport | undefined {
    return this.connected ? this.#transport : undefined;
  }

  /** The identity the next connection uses (the current one stays up until `disconnect()`). */
  setIdentity(identity: LinkIdentity | undefined): void {
    this.#identity = identity;
  }

  ensureConnected(signal?: AbortSignal): Promise<Transport> {
    if (this.#closed) return Promise.reject(abortError());
    const live = this.transport;
    if (live) return Promise.resolve(live);
    this.#connecting ??= this.#connectLoop(signal).finally(() => {
      this.#connecting = undefined;
    });
    return this.#connecting;
  }

  async #connectLoop(signal?: AbortSignal): Promise<Transport> {
    for (;;) {
      throwIfAborted(signal);
      try {
        const t = await this.connectOnce();
        this.#o.backoff.reset();
        return t;
      } catch (e) {
        if (e instanceof LinkRefusedError) throw e;
        if (this.#closed || signal?.aborted) throw abortError();
        const code = isCodedError(e) ? e.code : 'UNKNOWN';
        // Only the network is waited out here; anything else is the caller's to judge.
        if (!code.startsWith('TRANSPORT_')) throw e;
        this.#noteDown(code);
        const waitMs = this.#o.backoff.next();
        await this.#o.sleep(waitMs, signal);
      }
    }
  }

  /**
   * One connection attempt with the current identity. Rejects LinkRefusedError when the broker refuses
   * the identity, or the transport's error for network failures.
   */
  async connectOnce(): Promise<Transport> {
    try {
      return await this.#connectOnce();
    } finally {
      this.#phase = 'idle';
    }
  }

  async #connectOnce(): Promise<Transport> {
    if (this.#closed) throw abortError();
    this.#phase = 'dropping the previous transport';
    await this.#dropTransport(false);
    let prepared: Awaited<ReturnType<LinkIdentity['prepare']>> | undefined;
    try {
      this.#phase = 'loading the key';
      prepared = this.#identity ? await this.#identity.prepare() : undefined;
    } catch (e) {
      // The identity cannot be used at all (its key does not load): as good as refused.
      const code = isCodedError(e) ? e.code : 'UNKNOWN';
      throw new LinkRefusedError(code, `${this.#identity?.label ?? 'the identity'} is unusable: ${(e as Error).message}`, e);
    }
    let transport: Transport | undefined;
    try {
      transport = this.#o.transportFactory({
        url: this.#o.url,
        clientId: this.#o.clientId,
        reconnectPeriodMs: 0,
        tls: { ...(prepared?.tls ?? {}), ca: [...(typeof this.#o.ca === 'function' ? this.#o.ca() : this.#o.ca)] },
        ...(this.#o.will ? { will: this.#o.will() } : {}),
        onError: (err) => this.#o.log('warn', 'transport error', { link: this.#o.name, code: err.code, err: err.message }),
      });
      const t = transport;
      this.#phase = 'TLS + CONNECT';
      await t.connect();
      // Watch it before anything else awaits, so a drop right after CONNACK is never missed.
      this.#transport = t;
      t.onConnectionChange((up) => {
        if (!up && this.#transport === t) this.#lost(t);
      });
    } catch (e) {
      await transport?.close({ force: true }).catch(() => undefined);
      const code = isCodedError(e) ? e.code : 'UNKNOWN';
      if (REFUSED.has(code)) {
        this.#noteDown(code);
        throw new LinkRefusedError(code, `${this.#o.url} refused ${this.#identity?.label ?? 'the connection'}: ${(e as Error).message}`, e);
      }
      throw e;
    } finally {
      this.#phase = 'releasing the key';
      await prepared?.release().catch((e: unknown) => this.#o.log('warn', 'could not release the TLS key', { err: (e as Error).message }));
    }
    if (this.#closed) {
      this.#transport = undefined;
      await transport.close().catch(() => undefined);
      throw abortError();
    }
    if (!transport.connected) {
      // Lost while the key was being released: #lost already ran; report it as the network failure it is.
      throw new TransportError('TRANSPORT_CONNECTION_LOST', `connection to ${this.#o.url} lost right after CONNACK`);
    }
    this.#noteUp();
    this.#phase = 'setting up the session';
    if (this.#o.onUp) {
      await this.#o.onUp(transport).catch((e: unknown) =>
        this.#o.log('warn', 'could not finish setting up the connection', { link: this.#o.name, code: isCodedError(e) ? e.code : undefined }),
      );
    }
    return transport;
  }

  #lost(transport: Transport): void {
    this.#transport = undefined;
    // A lost transport is done: the next connection is a fresh one (and a transport that reconnected on
    // its own would take the client id over from it).
    void transport.close({ force: true }).catch(() => undefined);
    this.#noteDown('TRANSPORT_CONNECTION_LOST');
    this.#o.onDown?.();
  }

  #noteDown(code: string): void {
    if (this.#downSince === undefined) this.#downSince = this.#o.clock.now();
    if (this.#reportedDown) return;
    this.#reportedDown = true;
    this.#o.log('warn', this.#everUp ? 'connection to the fleet lost; reconnecting' : 'cannot reach the fleet yet; retrying', {
      link: this.#o.name,
      url: this.#o.url,
      code,
    });
  }

  #noteUp(): void {
    const since = this.#downSince;
    if (this.#everUp && since !== undefined) {
      this.#o.log('info', 'connection to the fleet restored', { link: this.#o.name, outageMs: this.#o.clock.now() - since });
    } else {
      this.#o.log('info', 'connected to the fleet', { link: this.#o.name, ...(since === undefined ? {} : { afterMs: this.#o.clock.now() - since }) });
    }
    this.#everUp = true;
    this.#downSince = undefined;
    this.#reportedDown = false;
  }

  /** Closes the current connection; `graceful` sends DISCONNECT (no last will). The link can connect again. */
  async disconnect(opts: { graceful: boolean } = { graceful: true }): Promise<void> {
    await this.#dropTransport(opts.graceful);
  }

  async #dropTransport(graceful: boolean): Promise<void> {
    const t = this.#transport;
    this.#transport = undefined;
    if (t) await t.close({ force: !graceful }).catch(() => undefined);
  }

  /** Ends the link for good (a waiting ensureConnected rejects AGENT_STOPPED). */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#dropTransport(true);
  }
}
