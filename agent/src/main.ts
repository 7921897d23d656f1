/**
 * Device agent CLI:
 *   agent [run] --bootstrap /etc/tpm-fleet/bootstrap.json --data /var/lib/tpm-fleet [--config /etc/tpm-fleet/agent.json]
 *   agent verify CERT.pem --data /var/lib/tpm-fleet [--chain FILE] [--json]   (verify-cli.ts)
 *   agent check --bootstrap FILE --data DIR [--config FILE] [--json]          (check/check-cli.ts)
 * A long-running process: enrolls on first start (or re-attests when its identity expired), then stays
 * online over mTLS with the identity key inside the TPM, rotating it before expiry, forever. No network
 * condition ends it. A non-retryable rejection or corrupt local state leaves it up in state `error` or
 * `revoked` (logged, and in its retained status when it can publish); it ends only on SIGINT/SIGTERM.
 * Logs JSON lines to stdout (never the token or key blobs). Exit codes: 0 stopped by a signal, 1 could
 * not start (config, store, TPM), 2 usage. Under systemd it reports readiness, status and watchdog pings
 * (service-manager.ts).
 */
import { parseArgs } from 'node:util';
import type { Logger } from 'pino';
import { createProgramLogger } from '../../common/logger.js';
import { systemClock } from '../../common/clock.js';
import { nativeServiceNotifier } from '../../native/lib/sd-notify.js';
import { Agent } from './agent.js';
import { loadAgentConfig } from './agent-config.js';
import { loadBootstrap } from './config.js';
import { CHECK_HELP, runCheck } from './check/check-cli.js';
import { attachServiceManager } from './service-manager.js';
import { runVerify } from './verify-cli.js';
import { AGENT_VERSION } from './version.js';

const DEFAULT_CONFIG = '/etc/tpm-fleet/agent.json';
const USAGE = 'usage: agent [run] --bootstrap FILE --data DIR [--config FILE] | agent verify CERT.pem --data DIR [--chain FILE] [--json] | agent check --bootstrap FILE --data DIR [--config FILE] [--json]';
const HELP = `${USAGE}

  run (default)   the device agent: enrolls with the bootstrap token (or re-attests), then stays online
                  over mTLS with its key in the TPM, rotating before expiry. Ends on SIGINT/SIGTERM.
      --bootstrap FILE   the factory station's bootstrap file (mode 0600)
      --data DIR         the agent's store (LevelDB) and verification snapshot
      --config FILE      runtime config (default ${DEFAULT_CONFIG}, optional there)
  verify CERT.pem  is this certificate valid now, answered offline from what the agent in DIR cached
      --data DIR         the agent's data directory
      --chain FILE       intermediates the peer presented
      --json             one JSON object instead of 'CODE: reason'
  check            is this device healthy: TPM, key and certificate, clock skew, CRL, broker listeners
      --bootstrap FILE, --data DIR, --config FILE   as for run
      --json             one JSON document instead of one line per check
                   (agent check --help for details)
  --version, --help

Exit codes: run: 0 stopped by a signal, 1 cannot start, 2 usage; verify: 0 valid, 1 not valid, 2 usage, 3 no data;
check: 0 all ok (warnings allowed), 1 a check failed, 2 usage or configuration error.
See agent/README.md.`;

const argv = process.argv.slice(2);
if (argv.length === 1 && (argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help')) {
  process.stdout.write(`${HELP}\n`);
  process.exit(0);
}
if (argv[0] === 'verify' && (argv.includes('--help') || argv.includes('-h'))) {
  process.stdout.write(`${HELP}\n`);
  process.exit(0);
}
if (argv[0] === 'verify') {
  const code = await runVerify(argv.slice(1), {
    out: (l) => process.stdout.write(`${l}\n`),
    err: (l) => process.stderr.write(`${l}\n`),
    now: () => Date.now(),
  });
  process.exit(code);
}
if (argv[0] === 'check') {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`${CHECK_HELP}\n`);
    process.exit(0);
  }
  const code = await runCheck(argv.slice(1), {
    out: (l) => process.stdout.write(`${l}\n`),
    err: (l) => process.stderr.write(`${l}\n`),
    clock: systemClock,
    defaultConfig: DEFAULT_CONFIG,
  });
  process.exit(code);
}
if (argv[0] === 'run') argv.shift();

let values;
try {
  ({ values } = parseArgs({
    args: argv,
    options: { bootstrap: { type: 'string' }, data: { type: 'string' }, config: { type: 'string' }, version: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
    strict: true,
  }));
} catch (e) {
  process.stderr.write(`agent: ${(e as Error).message}\n${USAGE}\n`);
  process.exit(2);
}
if (values.help) {
  process.stdout.write(`${HELP}\n`);
  process.exit(0);
}
if (values.version) {
  process.stdout.write(`${AGENT_VERSION}\n`);
  process.exit(0);
}
if (!values.bootstrap || !values.data) {
  process.stderr.write(`${USAGE}\n`);
  process.exit(2);
}

// Logs on stderr: readable on a terminal, JSON lines otherwise; LOG_LEVEL beats agent.json's logLevel.
let logger: Logger;
try {
  logger = createProgramLogger({ program: 'agent', version: AGENT_VERSION });
} catch (e) {
  process.stderr.write(`agent: ${(e as { code?: string }).code ?? 'AGENT_USAGE'}: ${(e as Error).message}\n`);
  process.exit(2);
}
let agent: Agent;
try {
  // An explicit --config must exist; the default path is optional.
  const config = loadAgentConfig(values.config ?? DEFAULT_CONFIG, { optional: values.config === undefined });
  logger = createProgramLogger({ program: 'agent', version: AGENT_VERSION, level: config.logLevel });
  agent = new Agent({ bootstrap: loadBootstrap(values.bootstrap), dataDir: values.data, config, logger });
} catch (e) {
  const err = e as { code?: string; message?: string };
  logger.error({ code: err.code }, err.message ?? String(e));
  process.exit(1);
}

// Transitions at debug: connection loss and return are logged once each by the agent itself.
agent.onStateChange((state) => logger.debug({ state }, 'state'));
// Under systemd (Type=notify: $NOTIFY_SOCKET, and $WATCHDOG_USEC with WatchdogSec=): start-up extensions,
// READY=1 once online, watchdog pings while the agent is live, STATUS= and STOPPING=1. Nothing otherwise.
attachServiceManager(agent, { notifier: nativeServiceNotifier(), env: process.env, logger });
let stopping = false;
const stop = (signal: NodeJS.Signals) => {
  if (stopping) return;
  stopping = true;
  logger.info({ signal }, 'stopping');
  agent.stop().then(
    () => process.exit(0),
    (e: unknown) => {
      logger.error({ code: (e as { code?: string }).code }, `stop failed: ${(e as Error).message}`);
      process.exit(1);
    },
  );
};
process.once('SIGINT', stop);
process.once('SIGTERM', stop);
try {
  await agent.start();
} catch {
  // Already logged by the agent, once. Store or TPM could not be opened (state stopped): exit 1, so a
  // service manager restarts it (a TPM not ready yet at boot). Parked in error/revoked: stay up (the
  // agent keeps the process alive) until a signal.
  if (!stopping && agent.state === 'stopped') process.exit(1);
}
