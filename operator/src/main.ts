/**
 * operator CLI entry: `node dist/operator.mjs <command> [args] --broker mqtts://host:port --cert op.pem
 * --key op-key.pem --ca root.pem`. Flow: cli.ts runOperator → commands.ts (checks, then the command)
 * → client.ts OperatorClient.call (MQTT request/reply) → output.ts. See operator/README.md.
 */
import { runOperator } from './cli.js';

process.exitCode = await runOperator(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, env: process.env });
