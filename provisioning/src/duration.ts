import { StationError } from './errors.js';

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400, w: 604_800 };
const MAX_SEC = 366 * 86_400;

/** `7d`, `12h`, `30m`, `90s`, `2w` → seconds. A unit is required, so `7` never silently means 7 s. */
export function parseDuration(text: string, what: string): number {
  const m = /^(\d{1,9})([smhdw])$/.exec(text.trim());
  const sec = m ? Number(m[1]) * UNITS[m[2]!]! : NaN;
  if (!(sec > 0)) throw new StationError('STATION_USAGE', `${what}: expected a duration such as 7d, 12h or 30m, got ${JSON.stringify(text)}`);
  if (sec > MAX_SEC) throw new StationError('STATION_USAGE', `${what}: at most 366d`);
  return sec;
}
