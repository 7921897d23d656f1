import { parseArgs } from 'node:util';
import type { Clock } from '../../../common/clock.js';
import { isCodedError } from '../../../common/coded-error.js';
import { loadAgentConfig, type AgentRuntimeConfig } from '../agent-config.js';
import { checkTrustBundle, loadBootstrap, type BootstrapConfig } from '../config.js';
import type { Tpm } from '../../../native/lib/tpm.js';
import type { CheckResult } from './check-result.js';
import { runChecks } from './run-checks.js';

/**
 * `agent check --bootstrap FILE --data DIR [--config FILE] [--json]`: is this device healthy, in the
 * spirit of `aziotctl check`. One line per check (`ok`/`warn`/`fail`, name, code unless ok, detail),
 * or one JSON document with `--json`. Works with the agent stopped (reads its store, then uses the
 * identity key for one mutual-TLS session and a clock check) and running (reads the snapshot it keeps;
 * never opens the device session, which would take the agent's over).
 *
 * Exit codes: 0 every check ok or warn, 1 a check failed, 2 usage or configuration error (one line
 * `agent: CODE: message`).
 */
export const CHECK_USAGE = 'usage: agent check --bootstrap FILE --data DIR [--config FILE] [--json]';

export const CHECK_HELP = `${CHECK_USAGE}

  Checks the device: TPM reachable; the stored identity key matches its certificate; the certificate
  chains to the trust bundle, is valid now and where it stands in the renewal policy; clock skew
  against the fleet; freshness of the cached CRL; both broker listeners reachable with a verified
  server certificate. One line per check: ok/warn/fail, name, code, detail.
      --bootstrap FILE   the bootstrap file the agent runs with (TPM, broker URLs, device id)
      --data DIR         the agent's data directory
      --config FILE      runtime config (default /etc/tpm-fleet/agent.json, optional there)
      --json             one JSON document: { result, agentRunning, checks: [{ name, result, code, detail }] }
  With the agent running, the device session is not opened (the broker would hand it over from the
  agent): the clock is then judged against the newest fleet-signed time the device holds.

Exit codes: 0 all ok (or warnings only), 1 a check failed, 2 usage or configuration error.`;

export interface CheckIo {
  readonly out: (line: string) => void;
  readonly err: (line: string) => void;
  readonly clock: Clock;
  /** Default 10 000. */
  readonly timeoutMs?: number;
  readonly defaultConfig: string;
  readonly openTpm?: (tcti: string) => Promise<Tpm>;
}

export async function runCheck(argv: readonly string[], io: CheckIo): Promise<number> {
  const usage = (msg: string): number => {
    io.err(`agent: AGENT_USAGE: ${msg} (${CHECK_USAGE})`);
    return 2;
  };
  let values: { bootstrap?: string; data?: string; config?: string; json?: boolean };
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: { bootstrap: { type: 'string' }, data: { type: 'string' }, config: { type: 'string' }, json: { type: 'boolean' } },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    return usage((e as Error).message.split('\n')[0]!);
  }
  if (!values.bootstrap) return usage('--bootstrap is required');
  if (!values.data) return usage('--data is required');
  let bootstrap: BootstrapConfig;
  let config: AgentRuntimeConfig;
  try {
    bootstrap = loadBootstrap(values.bootstrap);
    checkTrustBundle(bootstrap);
    config = loadAgentConfig(values.config ?? io.defaultConfig, { optional: values.config === undefined });
  } catch (e) {
    io.err(`agent: ${isCodedError(e) ? e.code : 'AGENT_CONFIG_INVALID'}: ${(e as Error).message.split('\n')[0]}`);
    return 2;
  }
  const report = await runChecks({
    bootstrap,
    dataDir: values.data,
    config,
    clock: io.clock,
    timeoutMs: io.timeoutMs ?? 10_000,
    ...(io.openTpm ? { openTpm: io.openTpm } : {}),
  });
  const failed = report.checks.some((c) => c.result === 'fail');
  const warned = report.checks.some((c) => c.result === 'warn');
  if (values.json) {
    io.out(JSON.stringify({ result: failed ? 'fail' : warned ? 'warn' : 'ok', agentRunning: report.agentRunning, checks: report.checks }));
  } else {
    for (const c of report.checks) io.out(formatLine(c));
  }
  return failed ? 1 : 0;
}

const NAME_WIDTH = 'device-listener'.length;

export function formatLine(c: CheckResult): string {
  return `${c.result.padEnd(4)}  ${c.name.padEnd(NAME_WIDTH)}  ${c.result === 'ok' ? '' : `${c.code}: `}${c.detail}`;
}
