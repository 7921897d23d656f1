import { SchemaError, type Schema } from '../../common/protocol/schema.js';

/**
 * Device metadata (model, serial, owner, whatever the line records): a flat, bounded map of strings.
 * The protocol schema module has closed objects only, so this open-keyed one is built here.
 */
const KEY = /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/;
const MAX_KEYS = 32;
const MAX_VALUE = 256;

export const metadataSchema: Schema<Record<string, string>> = {
  parse(v, path) {
    const at = (k: string) => (path ? `${path}.${k}` : k);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new SchemaError('SCHEMA_INVALID', path, 'expected an object');
    const entries = Object.entries(v);
    if (entries.length > MAX_KEYS) throw new SchemaError('SCHEMA_INVALID', path, `more than ${MAX_KEYS} keys`);
    const out: Record<string, string> = {};
    for (const [k, value] of entries) {
      if (!KEY.test(k)) throw new SchemaError('SCHEMA_INVALID', at(k), `key does not match ${KEY}`);
      if (typeof value !== 'string') throw new SchemaError('SCHEMA_INVALID', at(k), 'expected a string');
      if (value.length > MAX_VALUE) throw new SchemaError('SCHEMA_INVALID', at(k), `longer than ${MAX_VALUE} characters`);
      out[k] = value;
    }
    return out;
  },
};

/** Key-order-insensitive equality, since JSON round trips need not keep insertion order. */
export function sameMetadata(a: Readonly<Record<string, string>>, b: Readonly<Record<string, string>>): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => Object.hasOwn(b, k) && a[k] === b[k]);
}
