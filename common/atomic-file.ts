import { randomBytes } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/**
 * Replaces `path` with `data` so that a reader (mosquitto on SIGHUP, the bridge after a crash) sees the
 * old file or the new one, never a partial one: a temporary file in the same directory, fsync, rename.
 * `sync: false` skips the fsync for files rebuilt at start anyway (a power cut may then leave the old
 * content or an empty file, never a mix while the system runs).
 */
export async function writeFileAtomic(path: string, data: string | Buffer, mode = 0o644, opts: { readonly sync?: boolean } = {}): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const fh = await open(tmp, 'wx', mode);
  try {
    await fh.writeFile(data);
    if (opts.sync !== false) await fh.sync();
  } catch (e) {
    await fh.close();
    await rm(tmp, { force: true });
    throw e;
  }
  await fh.close();
  try {
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}
