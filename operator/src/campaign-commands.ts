import { CAMPAIGN_ID_PATTERN, CAMPAIGN_KINDS, CAMPAIGN_LIMITS } from '../../common/protocol/operator-campaigns.js';
import type { OperatorRequestOf, OperatorResultOf } from '../../common/protocol/operator.js';
import { isDeviceId } from '../../common/protocol/topics.js';
import type { CommandDef, ParsedCommand } from './commands.js';
import { parseCount, parseSeconds } from './duration.js';
import { usage } from './errors.js';
import type { Column, View } from './output.js';

/**
 * `operator campaign create|start|pause|resume|abort|status` and `operator campaign list` (the
 * protocol's `campaign-*` and `campaigns` commands). Every option is checked before anything is sent.
 */
type Campaign = OperatorResultOf<'campaign-status'>['campaign'];
type Wave = Campaign['waves'][number];
type Row = OperatorResultOf<'campaigns'>['campaigns'][number];

const str = (p: ParsedCommand, k: string): string | undefined => p.values[k] as string | undefined;

const waveColumns: readonly Column<Wave>[] = [
  { header: 'WAVE', value: (w) => w.index + 1 },
  { header: 'UP TO', value: (w) => `${w.percent}%` },
  { header: 'DEVICES', value: (w) => w.size },
  { header: 'SENT', value: (w) => w.sent },
  { header: 'OK', value: (w) => w.succeeded },
  { header: 'FAILED', value: (w) => w.failed },
  { header: 'SKIPPED', value: (w) => w.skipped },
  { header: 'PENDING', value: (w) => w.pending },
  { header: 'GATE', value: (w) => w.gate },
  { header: 'STARTED', value: (w) => w.dispatchedAt, time: true },
  { header: 'CODES', value: (w) => Object.entries(w.codes).map(([c, n]) => `${c}×${n}`).join(' ') || undefined },
];

const rowColumns: readonly Column<Row>[] = [
  { header: 'CAMPAIGN', value: (r) => r.campaignId },
  { header: 'KIND', value: (r) => r.kind },
  { header: 'STATE', value: (r) => r.state },
  { header: 'WAVE', value: (r) => (r.wave < 0 ? undefined : `${r.wave + 1}/${r.waves}`) },
  { header: 'DEVICES', value: (r) => r.devices },
  { header: 'OK', value: (r) => r.succeeded },
  { header: 'FAILED', value: (r) => r.failed },
  { header: 'CREATED', value: (r) => r.createdAt, time: true },
  { header: 'BY', value: (r) => r.createdBy },
];

/** The campaign as a table of its waves, its state and any pause reason below. */
export function campaignView(c: Campaign): View {
  const where = c.wave < 0 ? 'not started' : `wave ${c.wave + 1} of ${c.waves.length}`;
  const lines = [`campaign ${c.campaignId} (${c.kind}): ${c.state}, ${where}; ${c.succeeded} of ${c.devices} devices succeeded, ${c.failed} failed${c.excluded ? `, ${c.excluded} named but not selectable` : ''}`];
  const pct = (x: number) => `${Number((x * 100).toFixed(2))}%`;
  lines.push(`gates: success >= ${pct(c.gates.minSuccessRate)} of those heard from, failures <= ${c.gates.maxFailures}, heard from >= ${pct(c.gates.minHeardFrom)}, window ${c.gates.windowSec} s; jitter ${c.jitterSec} s`);
  if (c.paused) lines.push(`paused by ${c.paused.by}: ${c.paused.reason}`);
  return { kind: 'list', columns: waveColumns as readonly Column<unknown>[], rows: c.waves, json: c, note: lines.join('\n') };
}

/** A fraction: 0.95, 95% → 0.95; else OPERATOR_USAGE naming `option`. */
function parseFraction(text: string, option: string): number {
  const m = /^(\d{1,3}(?:\.\d{1,6})?)(%?)$/.exec(text.trim());
  const v = m ? Number(m[1]) / (m[2] ? 100 : 1) : NaN;
  if (!(v >= 0 && v <= 1)) throw usage(`${option}: expected a fraction such as 0.95 or 95%, got ${JSON.stringify(text)}`);
  return v;
}

function parsePercent(text: string, option: string): number {
  const m = /^(\d{1,3}(?:\.\d{1,2})?)%?$/.exec(text.trim());
  const v = m ? Number(m[1]) : NaN;
  if (!(v >= 0.01 && v <= 100)) throw usage(`${option}: expected a percentage from 0.01 to 100, got ${JSON.stringify(text)}`);
  return v;
}

function createBody(p: ParsedCommand): Omit<OperatorRequestOf<'campaign-create'>, 'v' | 'requestId'> {
  const kind = str(p, 'kind') ?? 'rotate';
  if (!(CAMPAIGN_KINDS as readonly string[]).includes(kind)) throw usage(`--kind must be one of ${CAMPAIGN_KINDS.join(', ')}`);
  const id = str(p, 'id');
  if (id !== undefined && !CAMPAIGN_ID_PATTERN.test(id)) throw usage(`--id ${JSON.stringify(id)}: letters, digits, '.', '_', '-', at most 64, starting with a letter or digit`);
  const owner = str(p, 'owner');
  const model = str(p, 'model');
  const list = str(p, 'devices');
  const all = p.values['all'] === true;
  if (!all && owner === undefined && model === undefined && list === undefined) throw usage('say which devices: --all, --owner O, --model M or --devices ID,ID,...');
  if (all && (owner !== undefined || model !== undefined || list !== undefined)) throw usage('--all selects every device; give it alone, or give --owner, --model or --devices instead');
  for (const [k, v] of [['owner', owner], ['model', model]] as const) if (v === '') throw usage(`--${k} must not be empty`);
  let deviceIds: string[] | undefined;
  if (list !== undefined) {
    deviceIds = list.split(',').map((x) => x.trim()).filter(Boolean);
    if (deviceIds.length === 0 || deviceIds.length > CAMPAIGN_LIMITS.maxDeviceIds) throw usage(`--devices: 1 to ${CAMPAIGN_LIMITS.maxDeviceIds} device ids, comma-separated`);
    const bad = deviceIds.find((d) => !isDeviceId(d));
    if (bad !== undefined) throw usage(`--devices: ${JSON.stringify(bad)} is not a device id`);
  }
  const sample = str(p, 'sample');
  const waves = str(p, 'waves');
  let percents: number[] | undefined;
  if (waves !== undefined) {
    percents = waves.split(',').map((x) => parsePercent(x, '--waves'));
    if (percents.length > CAMPAIGN_LIMITS.maxWaves) throw usage(`--waves: at most ${CAMPAIGN_LIMITS.maxWaves} waves`);
    if (percents.some((x, i) => i > 0 && x <= percents![i - 1]!) || percents.at(-1) !== 100) throw usage(`--waves: cumulative percentages, rising, ending at 100 (e.g. 1,10,50,100), got ${waves}`);
  }
  const minSuccess = str(p, 'min-success');
  const minHeard = str(p, 'min-heard');
  const maxFailures = str(p, 'max-failures');
  const window = str(p, 'window');
  const gates = {
    ...(minSuccess === undefined ? {} : { minSuccessRate: parseFraction(minSuccess, '--min-success') }),
    ...(minHeard === undefined ? {} : { minHeardFrom: parseFraction(minHeard, '--min-heard') }),
    ...(maxFailures === undefined ? {} : { maxFailures: parseCount(maxFailures, '--max-failures', { min: 0, max: CAMPAIGN_LIMITS.maxFailures }) }),
    ...(window === undefined ? {} : { windowSec: parseSeconds(window, '--window', { min: CAMPAIGN_LIMITS.minWindowSec, max: CAMPAIGN_LIMITS.maxWindowSec }) }),
  };
  const jitter = str(p, 'jitter');
  const expires = str(p, 'expires-in');
  return {
    kind: kind as (typeof CAMPAIGN_KINDS)[number],
    ...(id === undefined ? {} : { campaignId: id }),
    selector: {
      ...(owner === undefined ? {} : { owner }),
      ...(model === undefined ? {} : { model }),
      ...(deviceIds === undefined ? {} : { deviceIds }),
      ...(sample === undefined ? {} : { samplePercent: parsePercent(sample, '--sample') }),
    },
    ...(percents === undefined ? {} : { waves: percents }),
    ...(Object.keys(gates).length ? { gates } : {}),
    ...(jitter === undefined ? {} : { jitterSec: parseSeconds(jitter, '--jitter', { min: 0, max: CAMPAIGN_LIMITS.maxJitterSec }) }),
    ...(expires === undefined ? {} : { commandTtlSec: parseSeconds(expires, '--expires-in', { min: CAMPAIGN_LIMITS.minCommandTtlSec, max: CAMPAIGN_LIMITS.maxCommandTtlSec }) }),
  };
}

function step(name: 'campaign-start' | 'campaign-pause' | 'campaign-resume' | 'campaign-abort' | 'campaign-status', verb: string, summary: string): CommandDef {
  return {
    name,
    synopsis: `campaign ${verb} CAMPAIGN`,
    summary,
    positional: 'campaign',
    options: {},
    prepare(p) {
      const campaignId = p.campaignId!;
      return async (client) => campaignView((await client.call(name, { campaignId })).campaign);
    },
  };
}

export const CAMPAIGN_COMMANDS: readonly CommandDef[] = [
  {
    name: 'campaign-create',
    synopsis:
      'campaign create (--all | --owner O | --model M | --devices ID,...) [--sample PCT] [--waves 1,10,50,100] [--min-success 0.95] [--max-failures N] [--min-heard 0.9] [--window DURATION] [--jitter DURATION] [--expires-in DURATION] [--id ID] [--kind rotate]',
    summary: 'Plan a campaign: its devices (enrolled, not revoked) are picked now and split into waves; nothing is sent until it starts.',
    positional: 'none',
    options: {
      kind: { type: 'string', arg: 'KIND', help: `${CAMPAIGN_KINDS.join(', ')} (default rotate; this bridge runs rotate)` },
      id: { type: 'string', arg: 'ID', help: 'the campaign id (default: generated)' },
      all: { type: 'boolean', help: 'every enrolled, unrevoked device' },
      owner: { type: 'string', arg: 'O', help: 'devices whose metadata "owner" equals O' },
      model: { type: 'string', arg: 'M', help: 'devices whose metadata "model" equals M' },
      devices: { type: 'string', arg: 'ID,...', help: `exactly these devices (at most ${CAMPAIGN_LIMITS.maxDeviceIds})` },
      sample: { type: 'string', arg: 'PCT', help: 'a stable sample of PCT percent of what the selector picks' },
      waves: { type: 'string', arg: 'PCT,...', help: 'cumulative percentages per wave, rising to 100 (default 1,10,50,100)' },
      'min-success': { type: 'string', arg: 'F', help: 'gate: succeeded / heard from, at least F (0.95 or 95%; default 0.95)' },
      'max-failures': { type: 'string', arg: 'N', help: 'gate: more failures than N in a wave pause the campaign at once (default 0)' },
      'min-heard': { type: 'string', arg: 'F', help: 'gate: devices that reported / devices in the wave, at least F (default 0.9)' },
      window: { type: 'string', arg: 'DURATION', help: 'gate: decided when every device reported or this long after the wave started (default 10m)' },
      jitter: { type: 'string', arg: 'DURATION', help: 'each device acts at a random point within this (default min(30s, window/4))' },
      'expires-in': { type: 'string', arg: 'DURATION', help: 'devices ignore a command after this (default: window + 1d)' },
    },
    prepare(p) {
      const body = createBody(p);
      return async (client) => campaignView((await client.call('campaign-create', body)).campaign);
    },
  },
  step('campaign-start', 'start', 'Start a planned campaign: its first wave gets its commands.'),
  step('campaign-pause', 'pause', 'Pause a running campaign: no further wave starts (commands already sent stay).'),
  step('campaign-resume', 'resume', 'Resume a paused campaign; a wave whose gate tripped is accepted and the next one starts.'),
  step('campaign-abort', 'abort', "Abort a campaign: no further wave; unanswered commands are withdrawn from the broker."),
  step('campaign-status', 'status', 'A campaign: every wave, its progress, its gate and its failure codes.'),
  {
    name: 'campaigns',
    synopsis: 'campaign list',
    summary: 'Every campaign, newest first.',
    positional: 'none',
    options: {},
    prepare() {
      return async (client) => {
        const r = await client.call('campaigns', {});
        return { kind: 'list', columns: rowColumns as readonly Column<unknown>[], rows: r.campaigns, json: r.campaigns };
      };
    },
  },
];

/** `campaign <verb>` → the protocol command it means. */
export function campaignCommandName(verb: string | undefined): string | undefined {
  if (verb === 'list') return 'campaigns';
  return verb && ['create', 'start', 'pause', 'resume', 'abort', 'status'].includes(verb) ? `campaign-${verb}` : undefined;
}

/** The campaign id positional (OPERATOR_USAGE when missing or malformed). */
export function positionalCampaign(def: CommandDef, positionals: readonly string[]): string {
  if (positionals.length !== 1) throw usage(`${def.synopsis.split(' ').slice(0, 2).join(' ')} needs exactly one campaign id`);
  const id = positionals[0]!;
  if (!CAMPAIGN_ID_PATTERN.test(id)) throw usage(`${JSON.stringify(id)} is not a campaign id`);
  return id;
}
