import type { EnrollmentOutcome, OutageOutcome, RevocationOutcome, RotationOutcome } from './demo-steps.js';

/**
 * The demo's closing words: what happened (one line per lifecycle step, with its timings) and where
 * the data lives. Pure: the demo prints the lines.
 */
export interface DemoOutcome {
  readonly devices: number;
  readonly manufactureMs: number;
  readonly fleetStartMs: number;
  readonly provisioned: number;
  readonly provisionMs: number;
  readonly enrollment: EnrollmentOutcome;
  readonly rotation: RotationOutcome;
  /** Absent with a single device (no one left to learn of it). */
  readonly revocation?: RevocationOutcome;
  readonly outage: OutageOutcome;
  readonly totalMs: number;
}

const secs = (ms: number) => `${(ms / 1000).toFixed(2)} s`.padStart(8);
const line = (what: string, ms: number | undefined, text: string) => `  ${what.padEnd(14)} ${ms === undefined ? ' '.repeat(8) : secs(ms)}  ${text}`;

/** One line per step: what, how long it took, what came of it. */
export function summaryLines(o: DemoOutcome): string[] {
  const r = o.revocation;
  const out = o.outage;
  return [
    'Summary',
    line('manufactured', o.manufactureMs, `${o.devices} TPMs (swtpm) with EK certificates`),
    line('fleet started', o.fleetStartMs, 'CA, LevelDB inventory, mosquitto, bridge'),
    line('provisioned', o.provisionMs, `${o.provisioned}/${o.devices} devices registered by the factory station`),
    line('enrolled', o.enrollment.ms, `${o.enrollment.enrolled}/${o.devices} devices online over mutual TLS (first after ${secs(o.enrollment.firstMs).trim()})`),
    line('rotated', o.rotation.ms, `${o.rotation.rotated}/${o.devices} devices by the operator's rotate-now; ${o.rotation.retired} old certificates retired`),
    r
      ? line('revoked', r.othersReportedMs, `${r.deviceId} cut off after ${secs(r.cutOffMs).trim()}; ${r.others}/${r.others} others hold CRL #${r.crlAfter} (was #${r.crlBefore}) after ${secs(r.othersHoldMs).trim()}, report it after ${secs(r.othersReportedMs).trim()}`)
      : line('revoked', undefined, 'skipped: the revocation needs --devices 2 or more'),
    line('broker outage', out.downMs + out.recoverMs, `mosquitto down ${secs(out.downMs).trim()}; ${out.agents}/${out.agents} agents noticed in ${secs(out.detectMs).trim()}, online again ${secs(out.recoverMs).trim()} after its restart`),
    line('total', o.totalMs, ''),
  ].map((l) => l.trimEnd());
}

/** Where the demo keeps its data, under `work`, and what becomes of it. */
export function dataLines(work: string, keepRunning: boolean): string[] {
  return [
    `Data (all under ${work})`,
    '  fleet/ca/           fleet root and issuing CA (key files), CRL and trust bundle state',
    '  fleet/inventory/    LevelDB inventory: devices, certificates, status, events, audit',
    '  fleet/broker/       mosquitto config, ACLs, CRL file, persistence',
    '  station/            bootstrap files the factory station wrote (one-time tokens, now used)',
    '  agent-N/            each agent\'s store (LevelDB: identity slots A/B, outbox, CRL cache)',
    '  tpm-N/              each swtpm\'s state (its EKs, and the keys the TPM wraps)',
    '  manufacturer/       the throwaway TPM manufacturer CA',
    '  operator/           the operator\'s certificate and a config for dist/operator.mjs',
    keepRunning ? `Kept while the demo runs; Ctrl-C stops everything and removes ${work}.` : `Removed when the demo exits (--keep-running keeps it until Ctrl-C).`,
  ];
}
