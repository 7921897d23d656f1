import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { systemClock, type Clock } from '../../common/clock.js';
import { CodedError } from '../../common/coded-error.js';
import { encode, type DeviceStatus } from '../../common/protocol/messages.js';
import { Topics } from '../../common/protocol/topics.js';
import { MqttTransport, type MqttTransportOptions } from '../../common/transport/mqtt-transport.js';
import type { Transport } from '../../common/transport/transport.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import type { TlsKeyOptions, Tpm, TpmKey } from '../../native/lib/tpm.js';
import type { BootstrapConfig } from './config.js';
import { enroll, fromStored, toStored } from './enrollment.js';
import { AgentStore } from './store.js';

/**
 * The device agent: `new Agent(options)` does nothing; `start()` opens its store and the TPM, enrolls
 * if it has no identity yet (enrollment listener, server-authenticated TLS), then connects to the
 * device listener over mutual TLS with the identity key inside the TPM and publishes its retained
 * status (the last will marks it offline). No global state: many agents can run in one process.
 */
export type AgentState = 'stopped' | 'starting' | 'enrolling' | 'connecting' | 'online' | 'error';

export interface AgentLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface AgentOptions {
  readonly bootstrap: BootstrapConfig;
  readonly dataDir: string;
  readonly clock?: Clock;
  readonly logger?: AgentLogger;
  /** An already open TPM (the agent then does not close it); default: NativeTpm.open(bootstrap.tcti). */
  readonly tpm?: Tpm;
  /** For tests and the simulator: how transports are made. */
  readonly transportFactory?: (opts: MqttTransportOptions) => Transport;
  readonly sleep?: (ms: number) => Promise<void>;
  readonly responseTimeoutMs?: number;
  readonly agentVersion?: string;
}

export interface AgentStatus {
  readonly deviceId: string;
  readonly state: AgentState;
  readonly certSerial?: string;
  readonly certNotAfter?: number;
  /** TPM signatures this agent asked for outside TLS handshakes (CSR, certify). */
  readonly tpmSignatures: number;
  /** Completed mutual-TLS connects; each costs one TPM signature (CertificateVerify). */
  readonly tlsHandshakes: number;
}

export class Agent {
  readonly #o: AgentOptions;
  readonly #clock: Clock;
  readonly #topics: Topics;
  #state: AgentState = 'stopped';
  #store: AgentStore | undefined;
  #tpm: Tpm | undefined;
  #ownsTpm = false;
  #loaded: TpmKey[] = [];
  #tls: TlsKeyOptions | undefined;
  #transport: Transport | undefined;
  #cert: { serial: string; notAfter: number } | undefined;
  #signatures = 0;
  #handshakes = 0;
  readonly #listeners = new Set<(s: AgentState) => void>();

  constructor(options: AgentOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
    this.#topics = new Topics(options.bootstrap.baseTopic ?? 'fleet/v1');
  }

  get state(): AgentState {
    return this.#state;
  }

  onStateChange(listener: (s: AgentState) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  status(): AgentStatus {
    return {
      deviceId: this.#o.bootstrap.deviceId,
      state: this.#state,
      ...(this.#cert ? { certSerial: this.#cert.serial, certNotAfter: this.#cert.notAfter } : {}),
      tpmSignatures: this.#signatures,
      tlsHandshakes: this.#handshakes,
    };
  }

  #set(state: AgentState): void {
    this.#state = state;
    for (const l of this.#listeners) l(state);
  }

  #log(level: 'info' | 'warn' | 'error', msg: string, fields: Record<string, unknown> = {}): void {
    this.#o.logger?.[level]({ deviceId: this.#o.bootstrap.deviceId, ...fields }, msg);
  }

  #transportFor(opts: MqttTransportOptions): Transport {
    return this.#o.transportFactory ? this.#o.transportFactory(opts) : new MqttTransport(opts);
  }

  async start(): Promise<void> {
    if (this.#state !== 'stopped' && this.#state !== 'error') return;
    const cfg = this.#o.bootstrap;
    this.#set('starting');
    try {
      mkdirSync(this.#o.dataDir, { recursive: true, mode: 0o700 });
      this.#store = new AgentStore(join(this.#o.dataDir, 'state'));
      await this.#store.open();
      this.#ownsTpm = !this.#o.tpm;
      this.#tpm = this.#o.tpm ?? (await NativeTpm.open(cfg.tcti));
      const tpm = this.#tpm;
      // A previous agent process killed mid-operation may have left objects in a TPM without resource
      // manager (swtpm); take those slots back before loading anything.
      const reclaimed = await tpm.reclaimSlots();
      if (reclaimed) this.#log('warn', 'flushed TPM objects left by a previous process', { reclaimed });
      const srk = await tpm.ensureSrk();
      this.#loaded.push(srk);
      const ak = await this.#ensureAk(srk);

      let active = await this.#store.active();
      if (!active) {
        this.#set('enrolling');
        const enrollTransport = this.#transportFor({
          url: cfg.enrollUrl,
          clientId: cfg.deviceId,
          tls: { ca: cfg.trustBundle.join('\n') },
          reconnectPeriodMs: 1000,
        });
        await enrollTransport.connect();
        try {
          const result = await enroll({
            tpm,
            srk,
            ak,
            store: this.#store,
            transport: enrollTransport,
            topics: this.#topics,
            config: cfg,
            clock: this.#clock,
            sleep: this.#o.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms))),
            ...(this.#o.responseTimeoutMs === undefined ? {} : { responseTimeoutMs: this.#o.responseTimeoutMs }),
            onTpmSignature: () => void this.#signatures++,
            log: (msg, fields) => this.#log('info', msg, fields),
          });
          await tpm.flush(result.key);
        } finally {
          await enrollTransport.close();
        }
        active = await this.#store.active();
        if (!active) throw new CodedError('AGENT_STATE_CORRUPT', 'enrollment completed but no active identity is stored');
      }
      // The AK is only needed for attestation: free its TPM slot (swtpm has three).
      await tpm.flush(ak);
      this.#loaded = this.#loaded.filter((k) => k !== ak);

      this.#set('connecting');
      const key = await tpm.loadKey(srk, fromStored(active.slot.key));
      this.#loaded.push(key);
      this.#cert = { serial: active.slot.serial, notAfter: active.slot.notAfter };
      this.#tls = tpm.tlsKey(key);
      const trust = (await this.#store.getTrustBundle()) ?? cfg.trustBundle;
      const statusTopic = this.#topics.device(cfg.deviceId, 'status');
      const transport = this.#transportFor({
        url: cfg.deviceUrl,
        clientId: cfg.deviceId,
        tls: { ca: trust.join('\n'), cert: [active.slot.certificate, ...active.slot.chain].join('\n'), ...this.#tls },
        will: { topic: statusTopic, payload: this.#statusPayload(false, 'offline'), qos: 1, retain: true },
      });
      transport.onConnectionChange((up) => {
        if (up) this.#handshakes++;
      });
      await transport.connect();
      this.#transport = transport;
      await transport.publish(statusTopic, this.#statusPayload(true, 'enrolled'), { qos: 1, retain: true });
      this.#set('online');
      this.#log('info', 'online', { serial: active.slot.serial });
    } catch (e) {
      this.#set('error');
      this.#log('error', 'agent failed to start', { code: (e as { code?: string }).code, err: (e as Error).message });
      await this.#release();
      throw e;
    }
  }

  async #ensureAk(srk: TpmKey): Promise<TpmKey> {
    const tpm = this.#tpm!;
    const stored = await this.#store!.getAk();
    if (stored) {
      const ak = await tpm.loadKey(srk, fromStored(stored));
      this.#loaded.push(ak);
      return ak;
    }
    const created = await tpm.createAttestationKey(srk);
    await this.#store!.putAk(toStored(created.blobs));
    this.#loaded.push(created.key);
    return created.key;
  }

  #statusPayload(online: boolean, state: DeviceStatus['state']): Buffer {
    return encode('status', `status-${this.#clock.now()}`, this.#clock.now(), {
      deviceId: this.#o.bootstrap.deviceId,
      online,
      state,
      ...(this.#cert ? { certSerial: this.#cert.serial, certNotAfter: this.#cert.notAfter } : {}),
      ...(this.#o.agentVersion ? { agentVersion: this.#o.agentVersion } : {}),
    });
  }

  /** Publishes offline status, disconnects, releases TPM objects and the store. */
  async stop(): Promise<void> {
    if (this.#transport) {
      const statusTopic = this.#topics.device(this.#o.bootstrap.deviceId, 'status');
      await this.#transport.publish(statusTopic, this.#statusPayload(false, 'offline'), { qos: 1, retain: true }).catch(() => undefined);
    }
    await this.#release();
    this.#set('stopped');
  }

  async #release(): Promise<void> {
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
}
