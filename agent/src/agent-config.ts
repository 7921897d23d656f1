import { readFileSync } from 'node:fs';
import { int, literal, num, object, oneOf, optional } from '../../common/protocol/schema.js';
import { DEFAULT_BACKOFF_BASE_MS, DEFAULT_BACKOFF_CAP_MS } from './backoff.js';
import { AgentConfigError } from './config.js';
import { DEFAULT_OUTBOX_MAX_EVENTS } from './outbox.js';
import { checkBudget, DEFAULT_OFFLINE_BUDGET, type OfflineBudget } from './policy.js';

/**
 * The agent's runtime config (installed as /etc/tpm-fleet/agent.json): timing and limits, no secrets.
 * Separate from the factory bootstrap file (config.ts), which holds the one-time token. Every field is
 * optional except `v`; no file means all defaults (see `loadAgentConfig`).
 *
 * ```json
 * { "v": 1,
 *   "offlineBudget": { "lifetimeSec": 2592000, "renewAtFraction": 0.6667, "jitterFraction": 0.1, "graceSec": 3600 },
 *   "backoff": { "baseMs": 1000, "capMs": 180000 },
 *   "tickMs": 30000,
 *   "outbox": { "maxEvents": 10000 },
 *   "clockCheckSec": 3600,
 *   "revocation": { "graceSec": 86400, "reportDelayMs": 30000 },
 *   "logLevel": "info" }
 * ```
 *
 * `offlineBudget.lifetimeSec` must match the lifetime the fleet issues; the budget is checked at load
 * (policy.ts `checkBudget`) and an inconsistent one is refused with AGENT_CONFIG_INVALID.
 * Errors: AGENT_CONFIG_UNREADABLE (file exists but cannot be read), AGENT_CONFIG_INVALID (not JSON,
 * schema, or budget; the message names the field path).
 */

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

const TEN_YEARS_SEC = 10 * 366 * 86_400;

export const agentConfigSchema = object({
  v: literal(1),
  offlineBudget: optional(
    object({
      lifetimeSec: optional(int({ min: 60, max: TEN_YEARS_SEC })),
      renewAtFraction: optional(num({ min: 0, max: 1 })),
      jitterFraction: optional(num({ min: 0, max: 1 })),
      graceSec: optional(int({ min: 0, max: TEN_YEARS_SEC })),
    }),
  ),
  backoff: optional(
    object({
      baseMs: optional(int({ min: 1, max: 3_600_000 })),
      capMs: optional(int({ min: 1, max: 86_400_000 })),
    }),
  ),
  /** Longest the supervisor sleeps between timing checks. */
  tickMs: optional(int({ min: 100, max: 3_600_000 })),
  outbox: optional(object({ maxEvents: optional(int({ min: 1, max: 10_000_000 })) })),
  /** How often the online agent measures its clock against the fleet's (`time/request`); 0: only on each new connection. */
  clockCheckSec: optional(int({ min: 0, max: 7 * 86_400 })),
  /** Freshness of the cached CRL: answers say `stale` once now > nextUpdate + graceSec. */
  /**
   * `graceSec`: answers say `stale` once now > the CRL's nextUpdate + graceSec. `reportDelayMs`: the
   * status saying a new CRL or trust bundle is held goes out after a random delay up to this, coalesced,
   * so a fleet's devices do not all answer one revocation at the same moment.
   */
  revocation: optional(object({ graceSec: optional(int({ min: 0, max: TEN_YEARS_SEC })), reportDelayMs: optional(int({ min: 0, max: 3_600_000 })) })),
  logLevel: optional(oneOf(LOG_LEVELS)),
});

/** The resolved config: every default filled in, the budget checked. */
export interface AgentRuntimeConfig {
  readonly v: 1;
  readonly offlineBudget: OfflineBudget;
  readonly backoff: { readonly baseMs: number; readonly capMs: number };
  readonly tickMs: number;
  readonly outbox: { readonly maxEvents: number };
  readonly clockCheckSec: number;
  readonly revocation: { readonly graceSec: number; readonly reportDelayMs: number };
  readonly logLevel: LogLevel;
}

export const DEFAULT_TICK_MS = 30_000;
/** One day past the CRL's nextUpdate (the fleet reissues a quarter of its 24 h period early). */
export const DEFAULT_CRL_GRACE_SEC = 86_400;
export const DEFAULT_REPORT_DELAY_MS = 30_000;
export const DEFAULT_CLOCK_CHECK_SEC = 3_600;

export const DEFAULT_AGENT_CONFIG: AgentRuntimeConfig = {
  v: 1,
  offlineBudget: DEFAULT_OFFLINE_BUDGET,
  backoff: { baseMs: DEFAULT_BACKOFF_BASE_MS, capMs: DEFAULT_BACKOFF_CAP_MS },
  tickMs: DEFAULT_TICK_MS,
  outbox: { maxEvents: DEFAULT_OUTBOX_MAX_EVENTS },
  clockCheckSec: DEFAULT_CLOCK_CHECK_SEC,
  revocation: { graceSec: DEFAULT_CRL_GRACE_SEC, reportDelayMs: DEFAULT_REPORT_DELAY_MS },
  logLevel: 'info',
};

/**
 * Validates a parsed document, fills defaults and checks the offline budget. `source` prefixes error
 * messages (the file path when loaded from disk).
 */
export function parseAgentConfig(json: unknown, source = 'agent config'): AgentRuntimeConfig {
  let parsed;
  try {
    parsed = agentConfigSchema.parse(json, '');
  } catch (e) {
    throw new AgentConfigError('AGENT_CONFIG_INVALID', `${source}: ${(e as Error).message}`, { cause: e });
  }
  const d = DEFAULT_AGENT_CONFIG;
  const config: AgentRuntimeConfig = {
    v: 1,
    offlineBudget: {
      lifetimeSec: parsed.offlineBudget?.lifetimeSec ?? d.offlineBudget.lifetimeSec,
      renewAtFraction: parsed.offlineBudget?.renewAtFraction ?? d.offlineBudget.renewAtFraction,
      jitterFraction: parsed.offlineBudget?.jitterFraction ?? d.offlineBudget.jitterFraction,
      graceSec: parsed.offlineBudget?.graceSec ?? d.offlineBudget.graceSec,
    },
    backoff: {
      baseMs: parsed.backoff?.baseMs ?? d.backoff.baseMs,
      capMs: parsed.backoff?.capMs ?? d.backoff.capMs,
    },
    tickMs: parsed.tickMs ?? d.tickMs,
    outbox: { maxEvents: parsed.outbox?.maxEvents ?? d.outbox.maxEvents },
    clockCheckSec: parsed.clockCheckSec ?? d.clockCheckSec,
    revocation: {
      graceSec: parsed.revocation?.graceSec ?? d.revocation.graceSec,
      reportDelayMs: parsed.revocation?.reportDelayMs ?? d.revocation.reportDelayMs,
    },
    logLevel: parsed.logLevel ?? d.logLevel,
  };
  if (config.backoff.capMs < config.backoff.baseMs) {
    throw new AgentConfigError(
      'AGENT_CONFIG_INVALID',
      `${source}: backoff.capMs ${config.backoff.capMs} is below backoff.baseMs ${config.backoff.baseMs}`,
    );
  }
  try {
    checkBudget(config.offlineBudget);
  } catch (e) {
    throw new AgentConfigError('AGENT_CONFIG_INVALID', `${source}: ${(e as Error).message}`, { cause: e });
  }
  return config;
}

/**
 * Reads the runtime config. No path: the defaults. A path that does not exist: the defaults when
 * `optional` is set (the default location, where a device may have no file), otherwise
 * AGENT_CONFIG_UNREADABLE like any other read failure (an explicit path with a typo is not silently
 * ignored). Not JSON, schema or budget failures: AGENT_CONFIG_INVALID naming the file and field.
 */
export function loadAgentConfig(path: string | undefined, opts: { optional?: boolean } = {}): AgentRuntimeConfig {
  if (path === undefined) return DEFAULT_AGENT_CONFIG;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    if (opts.optional && (e as NodeJS.ErrnoException).code === 'ENOENT') return DEFAULT_AGENT_CONFIG;
    throw new AgentConfigError('AGENT_CONFIG_UNREADABLE', `cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new AgentConfigError('AGENT_CONFIG_INVALID', `${path} is not JSON`, { cause: e });
  }
  return parseAgentConfig(json, path);
}
