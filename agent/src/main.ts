/**
 * Device agent CLI: `agent --bootstrap /etc/tpm-fleet/bootstrap.json --data /var/lib/tpm-fleet`.
 * Enrolls on first start, then stays online over mTLS with the identity key inside the TPM.
 * Logs JSON lines to stdout (never the token or key blobs). SIGINT/SIGTERM stop it cleanly.
 */
import { parseArgs } from 'node:util';
import pino from 'pino';
import { Agent } from './agent.js';
import { loadBootstrap } from './config.js';

const { values } = parseArgs({ options: { bootstrap: { type: 'string' }, data: { type: 'string' } }, strict: true });
if (!values.bootstrap || !values.data) {
  process.stderr.write('usage: agent --bootstrap FILE --data DIR\n');
  process.exit(2);
}
const logger = pino({ base: { program: 'agent' } });
let stopping = false;
try {
  const agent = new Agent({ bootstrap: loadBootstrap(values.bootstrap), dataDir: values.data, logger });
  agent.onStateChange((state) => logger.info({ state }, 'state'));
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
  await agent.start();
} catch (e) {
  // A start interrupted by a signal ends through stop() above.
  if (!stopping) {
    const err = e as { code?: string; message?: string };
    logger.error({ code: err.code }, err.message ?? String(e));
    process.exit(1);
  }
}
