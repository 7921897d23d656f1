import { CodedError } from '../coded-error.js';

/**
 * A small runtime schema language for network input. Every message from the network passes through
 * `parseMessage` (size limit, JSON parse, schema) before any field is used. Schemas reject unknown
 * properties, bound every string, array and binary field, and produce typed values.
 *
 * Why not a library: the protocol needs ~10 shapes with hard size limits and base64 fields decoded
 * to Buffers; this is ~150 lines with no dependency, and the limits stay visible next to each field.
 */
export type SchemaErrorCode = 'SCHEMA_TOO_LARGE' | 'SCHEMA_NOT_JSON' | 'SCHEMA_INVALID';

export class SchemaError extends CodedError<SchemaErrorCode> {
  /** JSON path of the offending field, e.g. `body.csr`. */
  readonly path: string;
  constructor(code: SchemaErrorCode, path: string, message: string) {
    super(code, path ? `${path}: ${message}` : message);
    this.path = path;
  }
}

export interface Schema<T> {
  /** Validates `value` (reached at `path`) and returns it typed (and decoded, for binary fields). */
  parse(value: unknown, path: string): T;
}

export type Infer<S> = S extends Schema<infer T> ? T : never;

const fail = (path: string, message: string): never => {
  throw new SchemaError('SCHEMA_INVALID', path, message);
};

export function str(opts: { max: number; min?: number; pattern?: RegExp }): Schema<string> {
  return {
    parse(v, path) {
      if (typeof v !== 'string') return fail(path, 'expected a string');
      if (v.length > opts.max) return fail(path, `longer than ${opts.max} characters`);
      if (v.length < (opts.min ?? 0)) return fail(path, `shorter than ${opts.min} characters`);
      if (opts.pattern && !opts.pattern.test(v)) return fail(path, `does not match ${opts.pattern}`);
      return v;
    },
  };
}

export function literal<L extends string | number | boolean>(value: L): Schema<L> {
  return {
    parse(v, path) {
      if (v !== value) return fail(path, `expected ${JSON.stringify(value)}`);
      return value;
    },
  };
}

export function oneOf<L extends string>(values: readonly L[]): Schema<L> {
  const set: ReadonlySet<unknown> = new Set(values);
  return {
    parse(v, path) {
      if (!set.has(v)) return fail(path, `expected one of ${values.join(', ')}`);
      return v as L;
    },
  };
}

export function int(opts: { min: number; max: number }): Schema<number> {
  return {
    parse(v, path) {
      if (typeof v !== 'number' || !Number.isSafeInteger(v)) return fail(path, 'expected an integer');
      if (v < opts.min || v > opts.max) return fail(path, `out of range [${opts.min}, ${opts.max}]`);
      return v;
    },
  };
}

/** A finite number in [min, max] (fractions allowed: a rate of 0.2 per second, a fraction of a lifetime). */
export function num(opts: { min: number; max: number }): Schema<number> {
  return {
    parse(v, path) {
      if (typeof v !== 'number' || !Number.isFinite(v)) throw new SchemaError('SCHEMA_INVALID', path, 'expected a finite number');
      if (v < opts.min || v > opts.max) throw new SchemaError('SCHEMA_INVALID', path, `out of range [${opts.min}, ${opts.max}]`);
      return v;
    },
  };
}

export const bool: Schema<boolean> = {
  parse(v, path) {
    if (typeof v !== 'boolean') return fail(path, 'expected a boolean');
    return v;
  },
};

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Standard base64 decoded to a Buffer; `maxBytes` bounds the decoded size. */
export function base64(opts: { maxBytes: number; minBytes?: number }): Schema<Buffer> {
  const maxChars = Math.ceil(opts.maxBytes / 3) * 4;
  return {
    parse(v, path) {
      if (typeof v !== 'string') return fail(path, 'expected base64');
      if (v.length > maxChars) return fail(path, `larger than ${opts.maxBytes} bytes`);
      if (v.length % 4 !== 0 || !BASE64.test(v)) return fail(path, 'not canonical base64');
      const buf = Buffer.from(v, 'base64');
      if (buf.length > opts.maxBytes) return fail(path, `larger than ${opts.maxBytes} bytes`);
      if (buf.length < (opts.minBytes ?? 0)) return fail(path, `smaller than ${opts.minBytes} bytes`);
      return buf;
    },
  };
}

export function array<T>(item: Schema<T>, opts: { max: number; min?: number }): Schema<T[]> {
  return {
    parse(v, path) {
      if (!Array.isArray(v)) return fail(path, 'expected an array');
      if (v.length > opts.max) return fail(path, `more than ${opts.max} items`);
      if (v.length < (opts.min ?? 0)) return fail(path, `fewer than ${opts.min} items`);
      return v.map((x, i) => item.parse(x, `${path}[${i}]`));
    },
  };
}

type Shape = Record<string, Schema<unknown>>;
type OptionalKeys<S extends Shape> = { [K in keyof S]: S[K] extends OptionalSchema<unknown> ? K : never }[keyof S];
type ObjectOf<S extends Shape> = { [K in Exclude<keyof S, OptionalKeys<S>>]: Infer<S[K]> } & {
  [K in OptionalKeys<S>]?: Infer<S[K]>;
};

export interface OptionalSchema<T> extends Schema<T | undefined> {
  readonly optional: true;
}

export function optional<T>(inner: Schema<T>): OptionalSchema<T> {
  return {
    optional: true,
    parse(v, path) {
      return v === undefined ? undefined : inner.parse(v, path);
    },
  };
}

/** A closed object: unknown properties are refused, so nothing unvalidated rides along. */
export function object<S extends Shape>(shape: S): Schema<ObjectOf<S>> {
  const keys = Object.keys(shape);
  return {
    parse(v, path) {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) return fail(path, 'expected an object');
      for (const k of Object.keys(v)) {
        if (!Object.hasOwn(shape, k)) fail(path ? `${path}.${k}` : k, 'unknown property');
      }
      const out: Record<string, unknown> = {};
      for (const k of keys) {
        const parsed = shape[k]!.parse((v as Record<string, unknown>)[k], path ? `${path}.${k}` : k);
        if (parsed !== undefined) out[k] = parsed;
      }
      return out as ObjectOf<S>;
    },
  };
}

/** Keys of an open-keyed map (`record`): a letter, then letters, digits, `_`, `.`, `-`; at most 64. */
export const RECORD_KEY = /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/;

/** A bounded open-keyed map (metadata, details, counts by code); every key matches `key`. */
export function record<T>(value: Schema<T>, opts: { maxKeys: number; key?: RegExp }): Schema<Record<string, T>> {
  const keyPattern = opts.key ?? RECORD_KEY;
  return {
    parse(v, path) {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) return fail(path, 'expected an object');
      const entries = Object.entries(v);
      if (entries.length > opts.maxKeys) return fail(path, `more than ${opts.maxKeys} keys`);
      const out: Record<string, T> = {};
      for (const [k, x] of entries) {
        const at = path ? `${path}.${k}` : k;
        if (!keyPattern.test(k)) return fail(at, `key does not match ${keyPattern}`);
        out[k] = value.parse(x, at);
      }
      return out;
    },
  };
}

/**
 * Size-limits, JSON-parses and validates one network message. Byte size is checked before parsing so
 * an oversize payload costs nothing.
 */
export function parseMessage<T>(payload: Buffer | string, schema: Schema<T>, maxBytes: number): T {
  const size = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
  if (size > maxBytes) throw new SchemaError('SCHEMA_TOO_LARGE', '', `message of ${size} bytes exceeds ${maxBytes}`);
  let json: unknown;
  try {
    json = JSON.parse(typeof payload === 'string' ? payload : payload.toString('utf8'));
  } catch {
    throw new SchemaError('SCHEMA_NOT_JSON', '', 'message is not valid JSON');
  }
  return schema.parse(json, '');
}
