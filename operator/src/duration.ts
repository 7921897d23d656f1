import { usage } from './errors.js';

const UNITS: Readonly<Record<string, number>> = { s: 1, m: 60, h: 3600, d: 86_400, w: 604_800 };

/** `90` (seconds), `90s`, `30m`, `12h`, `7d`, `2w` → whole seconds in [min, max]; else OPERATOR_USAGE naming `option`. */
export function parseSeconds(text: string, option: string, bounds: { min: number; max: number }): number {
  const m = /^(\d{1,10})([smhdw]?)$/.exec(text.trim());
  const sec = m ? Number(m[1]) * (UNITS[m[2] || 's'] ?? NaN) : NaN;
  if (!Number.isSafeInteger(sec)) throw usage(`${option}: expected a duration such as 3600, 90s, 30m, 12h or 7d, got ${JSON.stringify(text)}`);
  if (sec < bounds.min || sec > bounds.max) throw usage(`${option}: must be between ${bounds.min} s and ${bounds.max} s`);
  return sec;
}

/** A whole number in [min, max]; else OPERATOR_USAGE naming `option`. */
export function parseCount(text: string, option: string, bounds: { min: number; max: number }): number {
  const n = /^\d{1,10}$/.test(text.trim()) ? Number(text.trim()) : NaN;
  if (!(n >= bounds.min && n <= bounds.max)) throw usage(`${option}: expected a whole number from ${bounds.min} to ${bounds.max}, got ${JSON.stringify(text)}`);
  return n;
}
