/**
 * LevelDB allows one process (and one open handle) per database directory. abstract-level reports a
 * second open as LEVEL_DATABASE_NOT_OPEN "Database failed to open", with the real reason
 * (LEVEL_LOCKED: "lock …/LOCK: already held by process") only in its `cause`. Callers turn this into
 * their own coded error that says plainly another process holds the database.
 */
export function isLevelLocked(e: unknown): boolean {
  for (let c: unknown = e, depth = 0; c !== undefined && c !== null && depth < 5; depth++) {
    const x = c as { code?: unknown; message?: unknown; cause?: unknown };
    if (x.code === 'LEVEL_LOCKED') return true;
    if (typeof x.message === 'string' && /lock .*already held/i.test(x.message)) return true;
    c = x.cause;
  }
  return false;
}
