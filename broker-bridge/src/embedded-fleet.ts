import { CodedError } from '../../common/coded-error.js';
import { join } from 'node:path';
import type { Clock } from '../../common/clock.js';
import { Topics } from '../../common/protocol/topics.js';
import { MqttTransport } from '../../common/transport/mqtt-transport.js';
import type { EkTrustStore } from '../../native/lib/ek-certificate.js';
import { BRIDGE_SESSION, Bridge, DEFAULT_BRIDGE_CLIENT_ID, type RequestHandler } from './bridge.js';
import { EmbeddedBroker } from './broker/embedded-broker.js';
import { BRIDGE_IDENTITY } from './broker/mosquitto-config.js';
import { issueServiceCertificate } from './broker/service-cert.js';
import { createCa, type BackendSpec, type CaMaterial } from './ca/ca-setup.js';
import { CrlSigner } from './ca/crl.js';
import { FileBrokerEnforcement } from './revocation/broker-enforcement.js';
import { OperatorRevokeHandler } from './revocation/operator-handler.js';
import { readRetained } from './revocation/read-retained.js';
import { readIssuedRegistry, recordIssued } from './ca/issued-registry.js';
import { TrustBundleSigner } from './trust/trust-bundle-signer.js';
import { RevocationService, type RevocationResult } from './revocation/revocation-service.js';
import { CertificateIssuer } from './ca/issuer.js';
import { EnrollmentService, type EnrollmentLogger } from './enrollment/enrollment-service.js';
import { DefaultEnrollmentPolicy, type EnrollmentPolicy } from './enrollment/policy.js';
import { DEFAULT_RATE_LIMITS, RateLimiter, type RateLimit } from './enrollment/rate-limiter.js';
import { LevelInventory } from './inventory/level-inventory.js';
import { CampaignService } from './campaign/campaign-service.js';
import { FleetMetrics } from './metrics/fleet-metrics.js';
import { MetricsServer } from './metrics/metrics-server.js';
import { RotationService } from './rotation/rotation-service.js';
import { IngestService } from './telemetry/ingest-service.js';
import { TimeService } from './telemetry/time-service.js';
import { StationRegistrationHandler } from './registration/station-handler.js';
import { OperatorHandler } from './operator/operator-handler.js';

/**
 * A whole fleet side in one process, on loopback: fleet CA (key file or PKCS#11), inventory, mosquitto
 * with generated config and ACLs (persistence in `dir/broker/persistence`), and the bridge connected as
 * `role:bridge` with its persistent session, serving enrollment, rotation and status/event ingestion.
 * The demo, the simulator and the integration tests run this; production runs the same parts as
 * separate services.
 *
 * Outages for tests: `stopBridge()`/`startBridge()` (messages published meanwhile are queued by the
 * broker for the bridge's session), `stopBroker()`/`startBroker()`, `restartBroker()` and `killBroker()`
 * (same ports; the bridge reconnects by itself and republishes the trust bundle).
 */
export interface EmbeddedFleetOptions {
  readonly dir: string;
  readonly clock: Clock;
  readonly trustDomain: string;
  readonly ekTrust: EkTrustStore;
  /** Stations whose factory-trusted EKs (TPMs without an EK certificate) the bridge registers. Default none. */
  readonly factoryTrustedEkStations?: readonly string[];
  readonly baseTopic?: string;
  /** Where the issuing CA key lives; default a key file in `dir/ca`. */
  readonly caBackend?: BackendSpec;
  readonly policy?: EnrollmentPolicy;
  /** Lifetime of device certificates (enrollment, rotation, re-attestation); tests use seconds. Default 30 days. */
  readonly certificateLifetimeSec?: number;
  /** Default: 10 requests burst then 1/s per device, 1000 burst then 500/s in all (enrollment and rotation share it). */
  readonly rateLimit?: { perDevice: RateLimit; global: RateLimit };
  readonly challengeTtlMs?: number;
  /** How long a rotation nonce stays valid (RotationService's default when absent). */
  readonly rotationTtlMs?: number;
  /** The bridge's MQTT client id (its persistent session). Default `DEFAULT_BRIDGE_CLIENT_ID`. */
  readonly bridgeClientId?: string;
  /** How often the bridge's transport retries a lost broker connection. Default 250 ms. */
  readonly bridgeReconnectMs?: number;
  /**
   * The clock device certificates are dated by, when it is not `clock` (a CA with a wrong clock, for
   * tests of what devices do with certificates their broker refuses). Default `clock`.
   */
  readonly issuerClock?: Clock;
  /** How often the bridge looks at running campaigns (gate windows). Default 1000 ms. */
  readonly campaignTickMs?: number;
  readonly logger?: EnrollmentLogger;
  /**
   * Read-only observers of every fleet topic (`role:auditor:<id>`); `auditorCertificate(id)` issues
   * their client certificates. Default `role:auditor:watch`.
   */
  readonly auditorIdentities?: readonly string[];
  /** Operators (`role:operator:<id>`) allowed to send revoke commands; `clientCertificate(id)` issues theirs. Default `role:operator:ops`. */
  readonly operatorIdentities?: readonly string[];
  /** Factory stations (`role:station:<id>`) allowed to register devices online. Default `role:station:line1`. */
  readonly stationIdentities?: readonly string[];
  /** CRL nextUpdate − thisUpdate. Default 24 h. */
  readonly crlNextUpdateSec?: number;
  /**
   * More services behind the bridge, built on each bridge start from the fleet's parts (their filters
   * must not overlap the built-in ones).
   */
  readonly extraHandlers?: (ctx: FleetServiceContext) => readonly RequestHandler[];
  /**
   * Serve Prometheus metrics over HTTP (`GET /metrics`) on `host` (default 127.0.0.1) and `port` (0: a
   * free one; `metricsUrl` tells which). Default: no metrics.
   */
  readonly metrics?: { readonly port: number; readonly host?: string };
}

/** What a service behind the embedded bridge may use. */
export interface FleetServiceContext {
  readonly inventory: LevelInventory;
  readonly topics: Topics;
  readonly clock: Clock;
  readonly revocation: RevocationService;
  readonly ekTrust: EkTrustStore;
  /** Publishes through the bridge's connection (rejects BRIDGE_STOPPED while it is down). */
  readonly publish: (topic: string, payload: Buffer, opts: { qos: 0 | 1; retain: boolean }) => Promise<void>;
  readonly logger?: EnrollmentLogger;
}


export const DEFAULT_AUDITOR = 'role:auditor:watch';
export const DEFAULT_OPERATOR = 'role:operator:ops';
export const DEFAULT_STATION = 'role:station:line1';

export class EmbeddedFleet {
  readonly topics: Topics;
  readonly ca: CaMaterial;
  readonly broker: EmbeddedBroker;
  readonly inventory: LevelInventory;
  /** CRLs, broker enforcement and the retained CRL topics for devices; `revokeDevice()` is the short way in. */
  readonly revocation: RevocationService;
  /** PEM roots devices trust (the fleet root; the broker's server certificate chains to it). */
  readonly trustBundle: string[];
  /** Signs the retained trust bundle message with the issuing CA; its version lives in `dir/ca/trust-bundle-state.json`. */
  readonly trustBundleSigner: TrustBundleSigner;
  readonly #o: EmbeddedFleetOptions;
  readonly #bridgeTls: { certPem: string; keyPem: string };
  #bridge: Bridge | undefined;
  #transport: MqttTransport | undefined;
  #campaigns: CampaignService | undefined;
  #issuer: CertificateIssuer;
  /** The fleet's metrics (with the `metrics` option); they live as long as the fleet, across bridge restarts. */
  readonly metrics: FleetMetrics | undefined;
  #metricsServer: MetricsServer | undefined;

  private constructor(
    o: EmbeddedFleetOptions,
    ca: CaMaterial,
    broker: EmbeddedBroker,
    inventory: LevelInventory,
    bridgeTls: { certPem: string; keyPem: string },
    revocation: RevocationService,
    metrics: FleetMetrics | undefined,
  ) {
    this.revocation = revocation;
    this.metrics = metrics;
    this.#o = o;
    this.topics = new Topics(o.baseTopic ?? 'fleet/v1');
    this.ca = ca;
    this.broker = broker;
    this.inventory = inventory;
    this.trustBundle = [ca.rootCertificatePem];
    this.trustBundleSigner = new TrustBundleSigner({ backend: ca.backend, signerChain: [ca.issuingCertificatePem], stateFile: join(o.dir, 'ca', 'trust-bundle-state.json'), clock: o.clock });
    this.#bridgeTls = bridgeTls;
    this.#issuer = new CertificateIssuer({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock: o.issuerClock ?? o.clock, trustDomain: o.trustDomain });
  }

  static async start(o: EmbeddedFleetOptions): Promise<EmbeddedFleet> {
    const ca = await createCa({
      outDir: join(o.dir, 'ca'),
      clock: o.clock,
      trustDomain: o.trustDomain,
      root: { commonName: `${o.trustDomain} root` },
      issuing: { commonName: `${o.trustDomain} issuing CA` },
      backend: o.caBackend ?? { kind: 'file', keyPath: join(o.dir, 'ca', 'issuing-key.pem') },
      keepRootKey: true,
    });
    // Every certificate on the mutual-TLS listener comes from the issuing CA: with `crlfile` set, the
    // broker needs a CRL for the issuer of each client certificate, and the fleet publishes only the
    // issuing CA's. The root signs nothing but the issuing CA.
    const service = (commonName: string, usage: 'server' | 'client', hosts?: string[]) =>
      issueServiceCertificate({ issuingCertPem: ca.issuingCertificatePem, backend: ca.backend, commonName, usage, clock: o.clock, ...(hosts ? { hosts } : {}) });
    const [server, bridgeTls] = await Promise.all([service('fleet-broker', 'server', ['127.0.0.1', 'localhost']), service(BRIDGE_IDENTITY, 'client')]);
    const inventory = new LevelInventory(join(o.dir, 'inventory'));
    await inventory.open();
    const topics = new Topics(o.baseTopic ?? 'fleet/v1');
    let broker: EmbeddedBroker | undefined;
    let fleet: EmbeddedFleet | undefined;
    let revocation: RevocationService | undefined;
    const metrics = o.metrics
      ? new FleetMetrics({ inventory, clock: o.clock, crl: { get current() { return revocation?.current; } }, campaigns: { list: () => (fleet ? fleet.campaigns()?.list() ?? [] : []) } })
      : undefined;
    revocation = new RevocationService({
      inventory,
      crlSigner: new CrlSigner({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock: o.clock }),
      clock: o.clock,
      stateFile: join(o.dir, 'ca', 'crl-state.json'),
      issuedRegistry: () => readIssuedRegistry(join(o.dir, 'ca')),
      // Until the broker runs there is nothing to tell: it starts with the current CRL.
      enforcement: { apply: (s) => (broker ? new FileBrokerEnforcement({ crlFile: broker.crlFile!, deviceAclFile: broker.deviceAclFile, pid: () => broker!.pid }).apply(s) : Promise.resolve()) },
      topics,
      publish: (topic, payload) => (fleet ? fleet.#publishCrl(topic, payload) : Promise.reject(new CodedError('BRIDGE_STOPPED', 'the bridge is not running'))),
      readRetained: (topic) => (fleet ? fleet.#readRetained(topic) : Promise.reject(new CodedError('BRIDGE_STOPPED', 'the bridge is not running'))),
      ...(o.crlNextUpdateSec === undefined ? {} : { nextUpdateSec: o.crlNextUpdateSec }),
      ...(o.logger ? { logger: o.logger } : {}),
      ...(metrics ? { metrics } : {}),
    });
    await revocation.start({ publish: false }); // the bridge publishes it once connected
    broker = await EmbeddedBroker.start({
      dir: join(o.dir, 'broker'),
      baseTopic: topics.base,
      serverCertPem: server.certPem,
      serverKeyPem: server.keyPem,
      clientCaPem: ca.chainPem,
      crlPem: revocation.currentPem!,
      auditorIdentities: o.auditorIdentities ?? [DEFAULT_AUDITOR],
      operatorIdentities: o.operatorIdentities ?? [DEFAULT_OPERATOR],
      stationIdentities: o.stationIdentities ?? [DEFAULT_STATION],
    });
    fleet = new EmbeddedFleet(o, ca, broker, inventory, bridgeTls, revocation, metrics);
    await fleet.startBridge();
    if (metrics && o.metrics) {
      const server = new MetricsServer({
        source: metrics,
        port: o.metrics.port,
        ...(o.metrics.host === undefined ? {} : { host: o.metrics.host }),
        ...(o.logger ? { onError: (err: unknown) => o.logger!.error({ err }, 'metrics scrape failed') } : {}),
      });
      try {
        await server.start();
      } catch (e) {
        await fleet.stop();
        throw e;
      }
      fleet.#metricsServer = server;
    }
    return fleet;
  }

  /**
   * Starts the bridge (a fresh process-equivalent: no in-memory state from before; the broker still
   * holds its session). Waits for the broker if it is down.
   */
  async startBridge(): Promise<void> {
    if (this.#bridge) return;
    const o = this.#o;
    const logger = o.logger ? { logger: o.logger } : {};
    const metrics = this.metrics ? { metrics: this.metrics } : {};
    // One policy for enrollment and rotation, as in `bridge run`; separate rate budgets, so that enroll
    // requests anyone can send under a device's id (the enrollment listener) never cost that device
    // its rotations (which only the device itself can send, over mTLS).
    const policy = o.policy ?? new DefaultEnrollmentPolicy({ trustDomain: o.trustDomain, lifetimeSec: o.certificateLifetimeSec ?? 30 * 86_400, backdateSec: 300 });
    const limiter = () => new RateLimiter({ perKey: o.rateLimit?.perDevice ?? DEFAULT_RATE_LIMITS.perDevice, global: o.rateLimit?.global ?? DEFAULT_RATE_LIMITS.global, clock: o.clock });
    const common = {
      inventory: this.inventory,
      issuer: this.#issuer,
      policy,
      clock: o.clock,
      topics: this.topics,
      chainPems: [this.#issuer.issuingCertificatePem],
      trustBundlePems: this.trustBundle,
      ...logger,
    };
    const enrollment = new EnrollmentService({ ...common, limiter: limiter(), ekTrust: o.ekTrust, ...metrics, ...(o.challengeTtlMs === undefined ? {} : { challengeTtlMs: o.challengeTtlMs }) });
    const rotation = new RotationService({ ...common, limiter: limiter(), ...metrics, ...(o.rotationTtlMs === undefined ? {} : { rotationTtlMs: o.rotationTtlMs }) });
    const campaigns = new CampaignService({ store: this.inventory, clock: o.clock, topics: this.topics, publish: (t, p, opts) => this.#publish(t, p, opts), ...logger, ...(o.campaignTickMs === undefined ? {} : { tickMs: o.campaignTickMs }) });
    const ingest = new IngestService({ inventory: this.inventory, clock: o.clock, topics: this.topics, ...logger, onEvent: (id, e) => campaigns.onDeviceEvent(id, e) });
    const transport = new MqttTransport({
      url: this.broker.deviceUrl,
      clientId: o.bridgeClientId ?? DEFAULT_BRIDGE_CLIENT_ID,
      ...BRIDGE_SESSION,
      reconnectPeriodMs: o.bridgeReconnectMs ?? 250,
      tls: { ca: this.ca.rootCertificatePem, cert: this.#bridgeTls.certPem, key: this.#bridgeTls.keyPem },
      ...(o.logger ? { onError: (err) => o.logger!.error({ code: err.code, ...err.details }, err.message) } : {}),
    });
    const operator = new OperatorRevokeHandler({ topics: this.topics, revocation: this.revocation });
    const bridge = new Bridge({
      transport,
      topics: this.topics,
      handlers: [
        enrollment,
        rotation,
        ingest,
        operator,
        new TimeService({ topics: this.topics, clock: o.clock }),
        new StationRegistrationHandler({
          topics: this.topics,
          inventory: this.inventory,
          ekTrust: o.ekTrust,
          clock: o.clock,
          ...logger,
          ...(o.factoryTrustedEkStations ? { factoryTrustedEkStations: o.factoryTrustedEkStations } : {}),
        }),
        new OperatorHandler({ topics: this.topics, inventory: this.inventory, clock: o.clock, publish: (t, p, opts) => this.#publish(t, p, opts), campaigns, ...logger }),
        ...(o.extraHandlers?.({
          inventory: this.inventory,
          topics: this.topics,
          clock: o.clock,
          revocation: this.revocation,
          ekTrust: o.ekTrust,
          publish: (topic, payload, opts) => this.#publish(topic, payload, opts),
          ...logger,
        }) ?? []),
      ],
      trustBundle: () => this.trustBundleSigner.message(this.trustBundle),
      connectRetryMs: o.bridgeReconnectMs ?? 250,
      ...logger,
    });
    this.#bridge = bridge;
    try {
      await bridge.start();
    } catch (e) {
      this.#bridge = undefined;
      await bridge.stop();
      throw e;
    }
    this.#transport = transport;
    this.#campaigns = campaigns;
    await campaigns.start();
    // The devices' CRL messages: what the broker lacks (a new bridge, or a broker that lost its retained
    // messages while the bridge was away) is sent again; never holds up the start. Likewise after every
    // reconnect (a broker restart or crash may have lost the newest retained messages).
    void this.revocation.republish().catch(() => undefined);
    transport.onConnectionChange((up) => {
      if (up && this.#transport === transport) void this.revocation.republish().catch(() => undefined);
    });
  }

  /**
   * Revokes a device (inventory, new CRL, broker files + SIGHUP, CRL published): from then on its
   * certificates are refused and its open session has no rights.
   */
  revokeDevice(deviceId: string, reason: string): Promise<RevocationResult> {
    return this.revocation.revokeDevice(deviceId, reason);
  }

  #publishCrl(topic: string, payload: Buffer): Promise<void> {
    return this.#publish(topic, payload, { qos: 1, retain: true });
  }

  async #publish(topic: string, payload: Buffer, opts: { qos: 0 | 1; retain: boolean }): Promise<void> {
    const t = this.#transport;
    if (!t) throw new CodedError('BRIDGE_STOPPED', 'the bridge is not running');
    await t.publish(topic, payload, opts);
  }

  async #readRetained(topic: string): Promise<Buffer | undefined> {
    const t = this.#transport;
    if (!t) throw new CodedError('BRIDGE_STOPPED', 'the bridge is not running');
    return readRetained(t, topic);
  }

  /** Stops the bridge; its broker session (and the messages queued for it) stays. */
  /**
   * A client certificate (and key) for a role or device CN, from the issuing CA, for observers and tests.
   * The broker names each mutual-TLS session by its CN: two clients with one CN take over each other.
   */
  /**
   * A client certificate from the issuing CA. Role CNs (`role:…`) are recorded in the CA's issued
   * registry, as `bridge cert issue` does, so that revoking the serial cuts the role's session.
   */
  async clientCertificate(commonName: string): Promise<{ certPem: string; keyPem: string; serialNumber: string }> {
    const c = await issueServiceCertificate({ issuingCertPem: this.ca.issuingCertificatePem, backend: this.ca.backend, commonName, usage: 'client', clock: this.#o.clock });
    if (commonName.startsWith('role:')) {
      await recordIssued(join(this.#o.dir, 'ca'), {
        serial: c.serialNumber,
        commonName,
        kind: 'role',
        notBefore: c.notBefore.getTime(),
        notAfter: c.notAfter.getTime(),
        issuedAt: this.#o.clock.now(),
      });
    }
    return c;
  }

  /** The running bridge's campaign service (undefined while the bridge is stopped). */
  campaigns(): CampaignService | undefined {
    return this.#campaigns;
  }

  async stopBridge(): Promise<void> {
    const b = this.#bridge;
    const campaigns = this.#campaigns;
    this.#campaigns = undefined;
    await campaigns?.stop();
    this.#bridge = undefined;
    this.#transport = undefined;
    await b?.stop();
  }

  /** A clean broker restart (SIGTERM: retained messages and sessions saved), same ports. */
  restartBroker(): Promise<void> {
    return this.broker.restart();
  }

  /** Broker down (SIGTERM) until `startBroker()`: a chosen outage length. */
  stopBroker(): Promise<void> {
    return this.broker.stop();
  }

  /** Broker down by SIGKILL (no final save) until `startBroker()`. */
  killBroker(): Promise<void> {
    return this.broker.kill();
  }

  /** Starts the broker again on the same ports, config and persistence directory. */
  startBroker(): Promise<void> {
    return this.broker.startAgain();
  }

  /** `http://127.0.0.1:<port>/metrics` while metrics are served (the `metrics` option). */
  get metricsUrl(): string | undefined {
    return this.#metricsServer?.url;
  }

  async stop(): Promise<void> {
    const server = this.#metricsServer;
    this.#metricsServer = undefined;
    await server?.stop();
    await this.revocation.stop();
    await this.stopBridge();
    await this.broker.stop();
    await this.inventory.close();
    await this.ca.backend.close();
  }
}
