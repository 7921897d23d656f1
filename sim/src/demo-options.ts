import { parseArgs } from 'node:util';
import { CodedError } from '../../common/coded-error.js';

/**
 * The demo's command line: `node dist/demo.mjs [--devices N] [--keep-running]`, `--help`, `--version`.
 * Parsing is pure (no exit, no output) so it is tested directly; demo.ts prints and exits.
 */
export type DemoOptionsCode = 'DEMO_USAGE';

export class DemoUsageError extends CodedError<DemoOptionsCode> {}

export const DEFAULT_DEVICES = 5;
export const MAX_DEVICES = 10;

export type DemoCommand = { readonly kind: 'help' } | { readonly kind: 'version' } | { readonly kind: 'run'; readonly devices: number; readonly keepRunning: boolean };

export const DEMO_HELP = `usage: demo [--devices N] [--keep-running]

The whole device lifecycle on one machine, with a live status table: TPMs manufactured (swtpm), the
fleet started (CA, LevelDB inventory, mosquitto, bridge), devices provisioned by the factory station,
then enrollment, a rotation (the operator's rotate-now), a revocation of one device, and a broker
outage and recovery. Ends with a summary and where the data lives.

  --devices N      how many devices (1-${MAX_DEVICES}, default ${DEFAULT_DEVICES}); the revocation needs 2 or more
  --keep-running   after the summary, keep the fleet and the devices running until Ctrl-C
  --help, -h       this text
  --version, -V    the build version

The table is redrawn in place on a terminal; piped or in CI it prints plain lines.
Ctrl-C at any point stops every process the demo started and removes its temporary directory.
Exit codes: 0 done, 1 a step failed, 2 usage, 128+N interrupted by signal N.`;

/** Reads argv (without node and the script); throws DemoUsageError for anything it does not accept. */
export function parseDemoArgs(argv: readonly string[]): DemoCommand {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: {
        devices: { type: 'string', default: String(DEFAULT_DEVICES) },
        'keep-running': { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
        version: { type: 'boolean', short: 'V', default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    throw new DemoUsageError('DEMO_USAGE', (e as Error).message, { cause: e });
  }
  if (values.help) return { kind: 'help' };
  if (values.version) return { kind: 'version' };
  const raw = values.devices;
  const devices = /^\d+$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isInteger(devices) || devices < 1 || devices > MAX_DEVICES) {
    throw new DemoUsageError('DEMO_USAGE', `--devices must be an integer from 1 to ${MAX_DEVICES}, not "${raw}"`);
  }
  return { kind: 'run', devices, keepRunning: values['keep-running'] };
}
