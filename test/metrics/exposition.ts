/**
 * Reads Prometheus text exposition for assertions: `sample(text, 'name', { label: 'v' })` is the value
 * of the sample with exactly those labels (label order does not matter), `types(text)` the declared
 * metric types by name.
 */
export interface Samples {
  /** Key: name plus labels sorted by name, e.g. `fleet_devices{state="active"}`. */
  readonly values: ReadonlyMap<string, number>;
  readonly types: ReadonlyMap<string, string>;
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parseExposition(text: string): Samples {
  const values = new Map<string, number>();
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line.startsWith('# TYPE ')) {
      const [, , name, type] = line.split(' ');
      types.set(name!, type!);
      continue;
    }
    if (line === '' || line.startsWith('#')) continue;
    const m = SAMPLE.exec(line);
    if (!m) throw new Error(`not an exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(LABEL)) labels[l[1]!] = l[2]!;
    values.set(key(m[1]!, labels), parseValue(m[3]!));
  }
  return { values, types };
}

function parseValue(v: string): number {
  if (v === '+Inf') return Infinity;
  if (v === '-Inf') return -Infinity;
  return Number(v); // 'NaN' → NaN
}

function key(name: string, labels: Record<string, string>): string {
  const parts = Object.keys(labels)
    .sort()
    .map((k) => `${k}="${labels[k]}"`);
  return parts.length ? `${name}{${parts.join(',')}}` : name;
}

/** The sample's value; throws when it is missing (a typo must not read as 0). */
export function sample(s: Samples, name: string, labels: Record<string, string> = {}): number {
  const k = key(name, labels);
  const v = s.values.get(k);
  if (v === undefined) throw new Error(`no sample ${k}; have: ${[...s.values.keys()].filter((x) => x.startsWith(name)).join(' ')}`);
  return v;
}
