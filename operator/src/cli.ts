import { parseArgs, type ParseArgsConfig } from 'node:util';
import { BUILD_VERSION } from '../../common/build-version.js';
import { isCodedError } from '../../common/coded-error.js';
import { OperatorClient } from './client.js';
import { campaignCommandName, positionalCampaign } from './campaign-commands.js';
import { COMMANDS, positionalDevice, type CommandDef, type CommandOption } from './commands.js';
import { exitCodeOf, usage } from './errors.js';
import { render, type OutputFormat } from './output.js';
import { SETTINGS, resolveSettings } from './settings.js';

/**
 * The operator CLI: `operator <command> [args] [options]`. Resolves the exit code: 0 done, 1 failed
 * (no answer, broker unreachable, a refusal worth retrying), 2 usage or bad input (including the
 * bridge's non-retryable refusals). Every failure is one line `operator: CODE: message` on stderr;
 * results go to stdout. Never rejects.
 */
export interface OperatorIo {
  readonly stdout: { write(s: string): unknown };
  readonly stderr: { write(s: string): unknown };
  readonly env: NodeJS.ProcessEnv;
}

const COMMON_OPTIONS: Readonly<Record<string, CommandOption>> = {
  config: { type: 'string', arg: 'FILE', help: 'JSON settings: broker, cert, key, ca, operatorId, baseTopic, timeoutSec (or OPERATOR_CONFIG)' },
  ...Object.fromEntries(SETTINGS.map((s) => [s.flag, { type: 'string', arg: s.arg, help: `${s.help} (or ${s.env})` } satisfies CommandOption])),
  json: { type: 'boolean', help: 'print JSON' },
  csv: { type: 'boolean', help: 'print CSV' },
  help: { type: 'boolean', help: 'this help' },
};

function optionLines(options: Readonly<Record<string, CommandOption>>): string {
  return Object.entries(options)
    .map(([k, o]) => `  --${k}${o.arg ? ` ${o.arg}` : ''}`.padEnd(30) + o.help)
    .join('\n');
}

function commandHelp(def: CommandDef): string {
  const own = Object.keys(def.options).length ? `\n\noptions:\n${optionLines(def.options)}` : '';
  return `usage: operator ${def.synopsis} [connection options] [--json | --csv]\n  ${def.summary}${own}\n\nconnection and output options:\n${optionLines(COMMON_OPTIONS)}\n`;
}

function overview(): string {
  return (
    'usage: operator <command> [args] [options]   (operator <command> --help, operator --version)\n\n' +
    'Fleet operator commands over MQTT (request/reply through the bridge), with a role:operator:<id> certificate.\n\n' +
    'commands:\n' +
    COMMANDS.map((c) => `  ${c.synopsis}\n      ${c.summary.split('\n')[0]}`).join('\n') +
    `\n\nconnection and output options (every command):\n${optionLines(COMMON_OPTIONS)}\n\n` +
    'Durations: 3600 (seconds), 90s, 30m, 12h, 7d, 2w. Output: a table, --json or --csv.\n' +
    'Exit codes: 0 done, 1 failed (no answer, unreachable, retryable refusal), 2 usage or refused input. See operator/README.md.\n'
  );
}

export async function runOperator(argv: readonly string[], io: OperatorIo): Promise<number> {
  let client: OperatorClient | undefined;
  try {
    if (argv.length === 1 && ['--help', '-h', 'help'].includes(argv[0]!)) {
      io.stdout.write(overview());
      return 0;
    }
    if (argv.length === 0) throw usage('no command; see operator --help');
    if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-V')) {
      io.stdout.write(`${BUILD_VERSION}\n`);
      return 0;
    }
    // `campaign <verb> ...` names the protocol's campaign-<verb> (and `campaign list`, campaigns).
    const isCampaign = argv[0] === 'campaign';
    if (isCampaign && argv.length === 2 && ['--help', '-h', 'help'].includes(argv[1]!)) {
      io.stdout.write(`usage: operator campaign <create|start|pause|resume|abort|status|list> ... (operator campaign <verb> --help)\n\n${COMMANDS.filter((c) => c.synopsis.startsWith('campaign ')).map((c) => `  ${c.synopsis}\n      ${c.summary}`).join('\n')}\n`);
      return 0;
    }
    const name = isCampaign ? campaignCommandName(argv[1]) : argv[0]!;
    if (isCampaign && name === undefined) throw usage(`campaign needs one of create, start, pause, resume, abort, status, list${argv[1] === undefined ? '' : `, got ${JSON.stringify(argv[1])}`}`);
    const def = COMMANDS.find((c) => c.name === name && (isCampaign || !c.synopsis.startsWith('campaign ')));
    if (!def) throw usage(`unknown command ${JSON.stringify(name)}; commands: ${[...new Set(COMMANDS.map((c) => c.synopsis.split(' ')[0]))].join(', ')}`);
    const rest = argv.slice(isCampaign ? 2 : 1);
    if (rest.includes('--help') || rest.includes('-h')) {
      io.stdout.write(commandHelp(def));
      return 0;
    }
    const options = Object.fromEntries(Object.entries({ ...COMMON_OPTIONS, ...def.options }).map(([k, o]) => [k, { type: o.type }])) as ParseArgsConfig['options'];
    let parsed;
    try {
      parsed = parseArgs({ args: [...rest], options, strict: true, allowPositionals: true });
    } catch (e) {
      throw usage(`${(e as Error).message.split('\n')[0]} (see operator ${def.name} --help)`);
    }
    const values = parsed.values as Record<string, string | boolean | undefined>;
    if (values['json'] && values['csv']) throw usage('give --json or --csv, not both');
    const format: OutputFormat = values['json'] ? 'json' : values['csv'] ? 'csv' : 'table';
    const campaignId = def.positional === 'campaign' ? positionalCampaign(def, parsed.positionals) : undefined;
    const deviceId = def.positional === 'campaign' ? undefined : positionalDevice(def, parsed.positionals);
    const settings = resolveSettings(values as Record<string, string | undefined>, io.env);
    const work = def.prepare({ values, deviceId, ...(campaignId === undefined ? {} : { campaignId }) }, settings);
    client = await OperatorClient.connect(settings);
    const view = await work(client);
    io.stdout.write(render(view, format));
    return 0;
  } catch (e) {
    const coded = isCodedError(e) ? e : undefined;
    const code = coded?.code ?? 'INTERNAL';
    const message = (coded?.message ?? String((e as Error)?.message ?? e)).split('\n')[0];
    io.stderr.write(`operator: ${code}: ${message}\n`);
    return coded ? exitCodeOf(coded) : 1;
  } finally {
    await client?.close().catch(() => undefined);
  }
}
