import type { Rng } from './prng.js';

/**
 * Input generators for the bridge fuzz suites. A message is handled in its wire form (the JSON object a
 * device publishes). Two families:
 *  - `malformed`: generated garbage around a message shape (random bytes, truncated/oversize JSON,
 *    wrong types, missing/extra fields, boundary lengths, unicode, deep nesting, huge numbers, base64
 *    garbage in binary fields, non-object roots, duplicate keys, encodings);
 *  - `mutate`: small changes to a captured valid message (bit and byte flips of the JSON text, flips
 *    inside decoded base64 fields, fields swapped in from other captured messages, other request ids).
 * Each input carries a label naming what was done, printed with the seed when a check fails.
 */
export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
export type WireMessage = { [k: string]: Json };

export interface FuzzInput {
  readonly label: string;
  readonly payload: Buffer;
}

/** Body fields that carry base64 binary data in some message. */
export const BINARY_FIELDS: ReadonlySet<string> = new Set([
  'ekCertificate',
  'ekPublic',
  'akPublic',
  'keyPublic',
  'csr',
  'secret',
  'certifyInfo',
  'certifySignature',
  'credentialBlob',
  'encryptedSecret',
  'nonce',
]);

const ID_CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-';
const B64_CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const HEX = '0123456789abcdef';
const UNICODE = ['é', 'ß', '中', '😀', '\u202e', '\u0000', '\u200b', '\ufeff', '\ud800', '\udfff', '𝔘', '\n', '"', '\\', 'İ', 'ǅ', '\u0085'];
const LENGTHS = [0, 1, 2, 7, 8, 15, 16, 21, 22, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 511, 512, 513, 1023, 1024, 2047, 2048, 2049, 4096, 8192, 9000];

export const newId = (rng: Rng, len = 16) => rng.chars(len, ID_CHARS);

/** A deep copy of a wire message (any JSON object: a captured message, or one from the fleet's `wire`). */
export const cloneMessage = (m: { readonly [k: string]: unknown }): WireMessage => JSON.parse(JSON.stringify(m)) as WireMessage;
const clone = cloneMessage;
const body = (m: WireMessage): { [k: string]: Json } =>
  (m.body && typeof m.body === 'object' && !Array.isArray(m.body) ? m.body : (m.body = {})) as { [k: string]: Json };

/** Paths of the message's fields: top-level keys and `body.<key>`. */
function paths(m: WireMessage): string[] {
  const top = Object.keys(m).filter((k) => k !== 'body');
  return [...top, ...Object.keys(body(m)).map((k) => `body.${k}`), 'body'];
}

function get(m: WireMessage, path: string): Json | undefined {
  if (path.startsWith('body.')) return body(m)[path.slice(5)];
  return m[path];
}

function set(m: WireMessage, path: string, value: Json | undefined): void {
  const [holder, key] = path.startsWith('body.') ? [body(m), path.slice(5)] : [m, path];
  if (value === undefined) delete holder[key];
  else holder[key] = value;
}

function wrongTypeValue(rng: Rng): Json {
  return rng.pick<() => Json>([
    () => null,
    () => true,
    () => 0,
    () => -1,
    () => 1.5,
    () => '',
    () => '1',
    () => [],
    () => [1, 'a'],
    () => ({}),
    () => ({ v: 1 }),
    () => Number.MAX_SAFE_INTEGER + 2,
    () => -Number.MAX_VALUE,
    () => 'true',
  ])();
}

function unicodeString(rng: Rng, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += rng.chance(0.5) ? rng.pick(UNICODE) : rng.chars(1, ID_CHARS);
  return s;
}

function alphabetFor(path: string): string {
  const key = path.replace(/^body\./, '');
  if (BINARY_FIELDS.has(key)) return B64_CHARS;
  if (key.toLowerCase().includes('serial')) return HEX;
  return ID_CHARS;
}

/** Replaces `"__FUZZ_RAW__"` in serialized JSON with raw text JSON.stringify cannot produce. */
const RAW = '__FUZZ_RAW__';
function withRaw(m: WireMessage, path: string, raw: string): Buffer {
  const c = clone(m);
  set(c, path, RAW);
  return Buffer.from(JSON.stringify(c).replace(`"${RAW}"`, raw));
}

function deep(depth: number, open: string, close: string, leaf = '1'): string {
  return open.repeat(depth) + leaf + close.repeat(depth);
}

/** Generated malformed input shaped around `base` (a valid message of the handler's topic). */
export function malformed(rng: Rng, base: WireMessage, maxBytes: number): FuzzInput {
  const m = clone(base);
  const p = rng.pick(paths(m));
  const text = JSON.stringify(m);
  const kinds: Array<() => FuzzInput> = [
    () => {
      const n = rng.pick([0, 1, 2, 3, 16, 100, 1000, maxBytes - 1, maxBytes, maxBytes + 1, 70_000]);
      // Large buffers get a repeated pattern: generating 70 kB byte by byte would dominate the run.
      const payload = n <= 2048 ? rng.bytes(n) : Buffer.alloc(n, rng.bytes(rng.range(1, 16)));
      return { label: `random bytes (${n})`, payload };
    },
    () => {
      const at = rng.int(text.length);
      return { label: `truncated JSON at ${at}/${text.length}`, payload: Buffer.from(text.slice(0, at)) };
    },
    () => {
      const target = rng.pick([maxBytes, maxBytes + 1, maxBytes * 2, 65 * 1024]);
      const pad = Math.max(0, target - Buffer.byteLength(text));
      return { label: `padded JSON to ${target} bytes`, payload: Buffer.from(text.slice(0, -1) + ' '.repeat(pad) + '}') };
    },
    () => {
      set(m, p, rng.chars(rng.pick([maxBytes, maxBytes + 10, 40_000]), 'A'));
      return { label: `oversize string at ${p}`, payload: Buffer.from(JSON.stringify(m)) };
    },
    () => {
      const v = wrongTypeValue(rng);
      set(m, p, v);
      return { label: `wrong type at ${p}: ${JSON.stringify(v)}`, payload: Buffer.from(JSON.stringify(m)) };
    },
    () => {
      set(m, p, undefined);
      return { label: `missing ${p}`, payload: Buffer.from(JSON.stringify(m)) };
    },
    () => {
      const key = rng.pick(['extra', '__proto__', 'constructor', 'prototype', 'toString', '', 'ключ', 'body', 'error', 'v ', 'hasOwnProperty']);
      const where = rng.chance(0.5) ? 'body' : 'top';
      const holder = where === 'body' ? body(m) : m;
      // Defined as an own property even for `__proto__` (as JSON.parse does).
      Object.defineProperty(holder, key, { value: wrongTypeValue(rng), enumerable: true, writable: true, configurable: true });
      return { label: `extra field ${JSON.stringify(key)} in ${where}`, payload: Buffer.from(JSON.stringify(m)) };
    },
    () => {
      const n = rng.pick(LENGTHS);
      const stringPaths = paths(m).filter((x) => typeof get(m, x) === 'string');
      const sp = stringPaths.length ? rng.pick(stringPaths) : p;
      set(m, sp, rng.chars(n, alphabetFor(sp)));
      return { label: `boundary length ${n} at ${sp}`, payload: Buffer.from(JSON.stringify(m)) };
    },
    () => {
      const v = unicodeString(rng, rng.pick([1, 8, 16, 40, 64, 65, 300]));
      set(m, p, v);
      return { label: `unicode at ${p}`, payload: Buffer.from(JSON.stringify(m)) };
    },
    () => {
      const depth = rng.pick([10, 100, 1000, 5000, 100_000]);
      const raw = rng.chance(0.5) ? deep(depth, '[', ']') : deep(depth, '{"a":', '}');
      return { label: `nesting depth ${depth} at ${p}`, payload: withRaw(m, p, raw) };
    },
    () => {
      const raw = rng.pick(['1e400', '-1e400', '1e308', '9007199254740993', '-9007199254740993', '0.1', '-0', '1E2', '123456789012345678901234567890', '8640000000000001', '0x10', 'NaN', 'Infinity', '01']);
      const numeric = paths(m).filter((x) => typeof get(m, x) === 'number');
      const np = numeric.length && rng.chance(0.7) ? rng.pick(numeric) : p;
      return { label: `number ${raw} at ${np}`, payload: withRaw(m, np, raw) };
    },
    () => {
      const binary = Object.keys(body(m)).filter((k) => BINARY_FIELDS.has(k));
      const key = binary.length ? rng.pick(binary) : 'csr';
      const v = rng.pick<() => string>([
        () => '!!!!' + rng.chars(40, B64_CHARS),
        () => 'AAAA====',
        () => 'A',
        () => '====',
        () => rng.chars(rng.range(20, 200), B64_CHARS) + '=',
        () => rng.chars(rng.range(20, 200), '-_' + ID_CHARS),
        () => rng.chars(60, B64_CHARS).replace(/(.{10})/g, '$1\n'),
        () => ' ' + rng.chars(64, B64_CHARS) + ' ',
        () => rng.bytes(rng.pick([0, 1, 7, 8, 15, 16, 31, 32, 33, 63, 64, 65, 511, 512, 513, 600, 601, 1024, 1025, 2048, 2049, 4096, 4097])).toString('base64'),
        () => '\u0000'.repeat(40),
        () => rng.bytes(48).toString('base64url'),
      ])();
      body(m)[key] = v;
      return { label: `base64 garbage in body.${key}`, payload: Buffer.from(JSON.stringify(m)) };
    },
    () => {
      const raw = rng.pick(['null', '[]', '{}', '"x"', '1', 'true', '[' + text + ']', '""', ' ', '\n']);
      return { label: `root ${raw.slice(0, 20)}`, payload: Buffer.from(raw) };
    },
    () => {
      const key = rng.pick(['"v":2,', '"requestId":"aaaaaaaa",', '"body":{},', '"sentAt":-1,']);
      return { label: `duplicate key ${key}`, payload: Buffer.from('{' + key + text.slice(1)) };
    },
    () => {
      const how = rng.pick(['bom', 'trailing', 'utf16', 'latin1', 'nul']);
      const payload =
        how === 'bom'
          ? Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(text)])
          : how === 'trailing'
            ? Buffer.from(text + rng.pick(['x', '}', ',', '\u0000', ' {}']))
            : how === 'utf16'
              ? Buffer.from(text, 'utf16le')
              : how === 'latin1'
                ? Buffer.from(text.replace(/"v"/, '"v\u00e9"'), 'latin1')
                : Buffer.from(text.replace(/,/, '\u0000,'));
      return { label: `encoding ${how}`, payload };
    },
  ];
  return rng.pick(kinds)();
}

function flipBits(rng: Rng, b: Buffer, count: number): Buffer {
  const out = Buffer.from(b);
  if (out.length === 0) return out;
  for (let i = 0; i < count; i++) {
    const at = rng.int(out.length);
    out[at] = out[at]! ^ (1 << rng.int(8));
  }
  return out;
}

function mutateBytes(rng: Rng, b: Buffer): { how: string; out: Buffer } {
  const at = rng.int(Math.max(1, b.length));
  return rng.pick<() => { how: string; out: Buffer }>([
    () => ({ how: 'flip bits', out: flipBits(rng, b, rng.range(1, 4)) }),
    () => {
      const out = Buffer.from(b);
      if (out.length) out[at] = rng.int(256);
      return { how: `set byte ${at}`, out };
    },
    () => ({ how: `insert byte at ${at}`, out: Buffer.concat([b.subarray(0, at), rng.bytes(1), b.subarray(at)]) }),
    () => ({ how: `delete byte ${at}`, out: Buffer.concat([b.subarray(0, at), b.subarray(at + 1)]) }),
    () => ({ how: `truncate at ${at}`, out: b.subarray(0, at) }),
    () => ({ how: 'extend', out: Buffer.concat([b, rng.bytes(rng.range(1, 64))]) }),
    () => ({ how: 'zero', out: Buffer.alloc(b.length) }),
    () => ({ how: 'random same length', out: rng.bytes(b.length) }),
    () => {
      // Big-endian TPM size prefixes live in the first bytes of marshalled structures.
      const out = Buffer.from(b);
      if (out.length >= 2) out.writeUInt16BE(rng.pick([0, 1, 0xffff, out.length, out.length - 2, out.length + 1]), rng.chance(0.5) ? 0 : Math.min(out.length - 2, rng.int(8)));
      return { how: 'size prefix', out };
    },
  ])();
}

/**
 * A mutation of captured valid message `base`. `others` are other captured valid messages (of any
 * topic) to swap fields from; `usedIds` are request ids already sent (replays).
 */
export function mutate(rng: Rng, base: WireMessage, others: readonly WireMessage[], usedIds: readonly string[]): FuzzInput {
  const m = clone(base);
  const b = body(m);
  const kinds: Array<() => FuzzInput> = [
    () => {
      const text = Buffer.from(JSON.stringify(m));
      const n = rng.range(1, 4);
      return { label: `flip ${n} bits in JSON`, payload: flipBits(rng, text, n) };
    },
    () => {
      const { how, out } = mutateBytes(rng, Buffer.from(JSON.stringify(m)));
      return { label: `JSON text: ${how}`, payload: out };
    },
    () => mutateBinaryField(rng, m),
    () => {
      const other = rng.pick(others);
      const ob = body(clone(other));
      const shared = Object.keys(ob).filter((k) => Object.hasOwn(b, k));
      const from = shared.length && rng.chance(0.7) ? rng.pick(shared) : rng.pick(Object.keys(ob).length ? Object.keys(ob) : ['x']);
      const to = Object.hasOwn(b, from) || Object.keys(b).length === 0 ? from : rng.pick(Object.keys(b));
      b[to] = ob[from] ?? null;
      return { label: `swap body.${to} <- other body.${from}`, payload: Buffer.from(JSON.stringify(m)) };
    },
    () => {
      const other = rng.pick(others);
      m.body = clone(other).body ?? null;
      return { label: 'whole body from another message', payload: Buffer.from(JSON.stringify(m)) };
    },
    () => {
      const id = usedIds.length && rng.chance(0.6) ? rng.pick(usedIds) : rng.pick([newId(rng, 8), newId(rng, 64), newId(rng, 7), newId(rng, 65)]);
      m.requestId = id;
      return { label: `requestId ${id}`, payload: Buffer.from(JSON.stringify(m)) };
    },
    () => {
      const strings = Object.keys(b).filter((k) => typeof b[k] === 'string' && !BINARY_FIELDS.has(k));
      if (strings.length === 0) return { label: 'unchanged', payload: Buffer.from(JSON.stringify(m)) };
      const key = rng.pick(strings);
      const s = b[key] as string;
      const at = rng.int(Math.max(1, s.length));
      const alpha = alphabetFor(`body.${key}`);
      b[key] = rng.pick([s.slice(0, at) + rng.chars(1, alpha) + s.slice(at + 1), s.slice(0, at), s + rng.chars(1, alpha), s.toUpperCase(), s.split('').reverse().join('')]);
      return { label: `string body.${key} tweaked`, payload: Buffer.from(JSON.stringify(m)) };
    },
    () => {
      const key = rng.pick(['sentAt', 'v']);
      m[key] = rng.pick([0, -1, 2, 1, 8_640_000_000_000_000, 8_640_000_000_000_001, Date.now(), 0.5]);
      return { label: `${key} = ${String(m[key])}`, payload: Buffer.from(JSON.stringify(m)) };
    },
    () => {
      const keys = Object.keys(b);
      const key = rng.pick(keys.length ? keys : ['x']);
      delete b[key];
      return { label: `drop body.${key}`, payload: Buffer.from(JSON.stringify(m)) };
    },
  ];
  return rng.pick(kinds)();
}

/** Mutates the decoded bytes of one base64 field of `base` (the deep checks' input). */
export function mutateBinaryField(rng: Rng, base: WireMessage): FuzzInput {
  const m = clone(base);
  const b = body(m);
  const binary = Object.keys(b).filter((k) => BINARY_FIELDS.has(k) && typeof b[k] === 'string');
  if (binary.length === 0) return { label: 'flip bits in JSON (no binary field)', payload: flipBits(rng, Buffer.from(JSON.stringify(m)), 1) };
  const key = rng.pick(binary);
  const { how, out } = mutateBytes(rng, Buffer.from(b[key] as string, 'base64'));
  b[key] = out.toString('base64');
  return { label: `body.${key} decoded: ${how}`, payload: Buffer.from(JSON.stringify(m)) };
}
