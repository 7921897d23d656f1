import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Clock } from '../../../common/clock.js';
import type { CrlResponse } from '../ca/crl.js';
import { isActiveCampaign, type CampaignView } from '../campaign/campaign-service.js';
import type { Inventory } from '../inventory/inventory.js';
import { CERTIFICATE_STATES, DEVICE_STATES, EXPIRY_WINDOWS, summarizeInventory, type InventorySummary } from './inventory-summary.js';
import type { CertificateOperation, RequestMetrics, ResultCode, RevocationMetrics } from './request-metrics.js';

/**
 * The bridge's Prometheus metrics, in a registry of its own (never prom-client's global one, so two
 * fleets in one process keep separate numbers). docs/metrics.md describes every metric.
 *
 * Two kinds:
 *  - counters and histograms the handlers feed through `RequestMetrics`/`RevocationMetrics` (this class
 *    implements both): request outcomes by code, issuance latency, revocations;
 *  - gauges computed at scrape time from the inventory and the CRL in force, with the injected clock
 *    (collect callbacks). One scrape reads the inventory once (`metrics()` computes the summary once
 *    and every collect callback reads it), O(devices + certificates).
 */
export interface FleetMetricsOptions {
  readonly inventory: Pick<Inventory, 'listDevices' | 'listCertificates'>;
  readonly clock: Clock;
  /** The CRL the broker enforces (RevocationService satisfies this); absent: no CRL metrics. */
  readonly crl?: { readonly current: CrlResponse | undefined };
  /** Also Node's process metrics (process_*, nodejs_*: CPU, memory, event loop lag). Default false. */
  readonly processMetrics?: boolean;
  /** Campaigns (CampaignService satisfies this); absent: no campaign metrics. */
  readonly campaigns?: { list(): readonly CampaignView[] };
}

/** Campaigns in the campaign metrics: every active one and the most recently finished ones. */
export const CAMPAIGN_METRICS_FINISHED = 5;
const CAMPAIGN_OUTCOMES = ['succeeded', 'failed', 'skipped', 'pending', 'waiting'] as const;

export const ISSUANCE_BUCKETS_SEC = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
/** Time since a device's last status: a minute … a month. */
export const FRESHNESS_BUCKETS_SEC = [60, 300, 900, 3600, 6 * 3600, 86_400, 7 * 86_400, 30 * 86_400];
export const PROPAGATION_BUCKETS_SEC = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60];

const OPERATIONS: readonly CertificateOperation[] = ['enroll', 'rotate', 'reattest'];

/** Every metric this class defines; the dashboard test checks the dashboard uses only these. */
export const FLEET_METRIC_NAMES = [
  'fleet_certificates',
  'fleet_certificates_expiring',
  'fleet_devices',
  'fleet_devices_online',
  'fleet_devices_never_seen',
  'fleet_devices_valid_certificate_ratio',
  'fleet_certificate_requests_total',
  'fleet_certificate_issuance_duration_seconds',
  'fleet_renewal_success_ratio',
  'fleet_crl_number',
  'fleet_crl_age_seconds',
  'fleet_crl_next_update_seconds',
  'fleet_inventory_freshness_seconds',
  'fleet_revocations_total',
  'fleet_revoked_certificates_total',
  'fleet_revocation_propagation_seconds',
  'fleet_campaign_devices',
  'fleet_campaign_info',
  'fleet_campaign_wave',
] as const;

export class FleetMetrics implements RequestMetrics, RevocationMetrics {
  readonly registry = new Registry();
  readonly #o: FleetMetricsOptions;
  readonly #requests: Counter<'operation' | 'code'>;
  readonly #issuance: Histogram<'operation'>;
  readonly #revocations: Counter<'target'>;
  readonly #revokedCerts: Counter;
  readonly #propagation: Histogram;
  /** Rotation outcomes since start, for the renewal success ratio (the counter holds the same). */
  #rotations = { ok: 0, all: 0 };
  /** The summary of the scrape under way (see `metrics()`). */
  #scrape: InventorySummary | undefined;

  constructor(o: FleetMetricsOptions) {
    this.#o = o;
    const registers = [this.registry];
    const summary = () => this.#summary();
    const now = () => o.clock.now();

    new Gauge({
      name: 'fleet_certificates',
      help: 'Device certificates in the inventory by state (valid, expired, revoked, superseded, not_yet_valid).',
      labelNames: ['state'],
      registers,
      collect() {
        const s = summary();
        for (const state of CERTIFICATE_STATES) this.set({ state }, s.certificates[state]);
      },
    });
    new Gauge({
      name: 'fleet_certificates_expiring',
      help: 'Valid device certificates whose notAfter falls within the window (1d, 7d, 30d) from now; windows are cumulative.',
      labelNames: ['window'],
      registers,
      collect() {
        const s = summary();
        for (const w of EXPIRY_WINDOWS) this.set({ window: w.label }, s.expiring[w.label]);
      },
    });
    new Gauge({
      name: 'fleet_devices',
      help: 'Devices in the inventory by state: registered (not enrolled yet), active (enrolled, not revoked), revoked.',
      labelNames: ['state'],
      registers,
      collect() {
        const s = summary();
        for (const state of DEVICE_STATES) this.set({ state }, s.devices[state]);
      },
    });
    new Gauge({
      name: 'fleet_devices_online',
      help: 'Active devices whose latest status says online.',
      registers,
      collect() {
        this.set(summary().online);
      },
    });
    new Gauge({
      name: 'fleet_devices_never_seen',
      help: 'Active devices the bridge never heard from (no status or event since enrollment); not in fleet_inventory_freshness_seconds.',
      registers,
      collect() {
        this.set(summary().neverSeen);
      },
    });
    new Gauge({
      name: 'fleet_devices_valid_certificate_ratio',
      help: 'Share (0..1) of active devices holding a valid certificate; NaN when there are no active devices.',
      registers,
      collect() {
        const s = summary();
        this.set(s.devices.active === 0 ? NaN : s.activeWithValidCertificate / s.devices.active);
      },
    });
    new Histogram({
      name: 'fleet_inventory_freshness_seconds',
      help: 'Per active device, seconds since its last status or event, computed at scrape time (a distribution over the fleet, not over time).',
      buckets: FRESHNESS_BUCKETS_SEC,
      registers,
      collect() {
        // Zeroed, not emptied: a fleet with nobody seen yet still has all its buckets (at 0).
        this.zero({});
        for (const sec of summary().secondsSinceLastSeen) this.observe(sec);
      },
    });

    this.#requests = new Counter({
      name: 'fleet_certificate_requests_total',
      help: "Certificate requests that ended, by operation (enroll, rotate, reattest) and result code ('ok' = issued, else the rejection code sent).",
      labelNames: ['operation', 'code'],
      registers,
    });
    this.#issuance = new Histogram({
      name: 'fleet_certificate_issuance_duration_seconds',
      help: 'Seconds from the arrival of the request that leads to a certificate (enroll proof, rotate request, re-attestation proof) to the certificate signed.',
      labelNames: ['operation'],
      buckets: ISSUANCE_BUCKETS_SEC,
      registers,
    });
    for (const operation of OPERATIONS) {
      // Present from the start (rate() needs a zero before the first increment).
      this.#requests.inc({ operation, code: 'ok' }, 0);
      this.#issuance.zero({ operation });
    }
    const rotations = () => this.#rotations;
    new Gauge({
      name: 'fleet_renewal_success_ratio',
      help: "Rotations that ended 'ok' over all rotations that ended, since the bridge started; NaN before the first.",
      registers,
      collect() {
        const r = rotations();
        this.set(r.all === 0 ? NaN : r.ok / r.all);
      },
    });

    const crl = () => o.crl?.current;
    new Gauge({
      name: 'fleet_crl_number',
      help: 'CRL number of the complete CRL in force (the one the broker enforces and devices hold).',
      registers,
      collect() {
        const c = crl();
        this.set(c ? Number(c.crlNumber) : NaN);
      },
    });
    new Gauge({
      name: 'fleet_crl_age_seconds',
      help: 'Seconds since thisUpdate of the CRL in force.',
      registers,
      collect() {
        const c = crl();
        this.set(c ? (now() - c.thisUpdate.getTime()) / 1000 : NaN);
      },
    });
    new Gauge({
      name: 'fleet_crl_next_update_seconds',
      help: 'Seconds until nextUpdate of the CRL in force (negative: overdue, relying parties treat it as stale).',
      registers,
      collect() {
        const c = crl();
        this.set(c ? (c.nextUpdate.getTime() - now()) / 1000 : NaN);
      },
    });

    this.#revocations = new Counter({
      name: 'fleet_revocations_total',
      help: 'Revocations that revoked something, by target (device: a device and all its certificates; serial: a role or service certificate).',
      labelNames: ['target'],
      registers,
    });
    for (const target of ['device', 'serial']) this.#revocations.inc({ target }, 0);
    this.#revokedCerts = new Counter({ name: 'fleet_revoked_certificates_total', help: 'Certificates revoked (serials newly listed in the CRL).', registers });
    this.#propagation = new Histogram({
      name: 'fleet_revocation_propagation_seconds',
      help: 'Seconds from a revocation request to the new CRL signed, published to devices and the broker told to enforce it (only revocations the broker enforced).',
      buckets: PROPAGATION_BUCKETS_SEC,
      registers,
    });

    if (o.campaigns) {
      const source = o.campaigns;
      const shown = () => {
        const all = source.list();
        const active = all.filter((c) => isActiveCampaign(c));
        return [...active, ...all.filter((c) => !isActiveCampaign(c)).slice(0, CAMPAIGN_METRICS_FINISHED)];
      };
      new Gauge({
        name: 'fleet_campaign_devices',
        help: 'Devices of a campaign by outcome: succeeded, failed, skipped (revoked since planned), pending (command sent, no report yet), waiting (wave not started).',
        labelNames: ['campaign', 'kind', 'outcome'],
        registers,
        collect() {
          this.reset();
          for (const c of shown()) {
            const count = { succeeded: c.succeeded, failed: c.failed, skipped: 0, pending: 0, waiting: 0 };
            for (const w of c.waves) {
              count.skipped += w.skipped;
              if (w.dispatchedAt === undefined) count.waiting += w.size;
              else count.pending += w.pending;
            }
            for (const outcome of CAMPAIGN_OUTCOMES) this.set({ campaign: c.campaignId, kind: c.kind, outcome }, count[outcome]);
          }
        },
      });
      new Gauge({
        name: 'fleet_campaign_info',
        help: "1 per campaign, labelled with its state and its current wave's gate (pending, passed, tripped, accepted; none before the start).",
        labelNames: ['campaign', 'kind', 'state', 'gate'],
        registers,
        collect() {
          this.reset();
          for (const c of shown()) this.set({ campaign: c.campaignId, kind: c.kind, state: c.state, gate: c.waves[c.wave]?.gate ?? 'none' }, 1);
        },
      });
      new Gauge({
        name: 'fleet_campaign_wave',
        help: 'The wave a campaign is at (1-based; 0 before the start), next to its number of waves.',
        labelNames: ['campaign', 'of'],
        registers,
        collect() {
          this.reset();
          for (const c of shown()) this.set({ campaign: c.campaignId, of: String(c.waves.length) }, c.wave + 1);
        },
      });
    }
    if (o.processMetrics) collectDefaultMetrics({ register: this.registry });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The exposition text for one scrape: the inventory is read once for all its gauges. */
  async metrics(): Promise<string> {
    this.#scrape = this.#compute();
    try {
      return await this.registry.metrics();
    } finally {
      this.#scrape = undefined;
    }
  }

  result(operation: CertificateOperation, code: ResultCode): void {
    this.#requests.inc({ operation, code });
    if (operation === 'rotate') {
      this.#rotations.all++;
      if (code === 'ok') this.#rotations.ok++;
    }
  }

  issued(operation: CertificateOperation, seconds: number): void {
    this.#issuance.observe({ operation }, Math.max(0, seconds));
  }

  revoked(target: 'device' | 'serial', serials: number, seconds: number, enforced: boolean): void {
    if (serials === 0) return;
    this.#revocations.inc({ target });
    this.#revokedCerts.inc(serials);
    if (enforced) this.#propagation.observe(Math.max(0, seconds));
  }

  /** Read directly through `registry.metrics()`, each callback computes its own (still correct). */
  #summary(): InventorySummary {
    return this.#scrape ?? this.#compute();
  }

  #compute(): InventorySummary {
    const inv = this.#o.inventory;
    return summarizeInventory(inv.listDevices(), inv.listCertificates(), this.#o.clock.now());
  }
}
