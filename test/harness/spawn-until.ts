import { spawn, type ChildProcess } from 'node:child_process';

/** Spawns `command`, resolves once `ready(output)` holds (polling), rejects if it exits first or after `timeoutMs`. */
export async function spawnUntil(command: string, args: readonly string[], ready: (output: string) => boolean, timeoutMs = 30_000, env?: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; output: () => string; stop(): Promise<number | null> }> {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(env ? { env } : {}) });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  try {
    await new Promise<void>((ok, fail) => {
      const timer = setTimeout(() => (clearInterval(poll), fail(new Error(`${command}: not ready within ${timeoutMs} ms:\n${out}`))), timeoutMs);
      const poll = setInterval(() => {
        if (!ready(out)) return;
        clearInterval(poll);
        clearTimeout(timer);
        ok();
      }, 50);
      void exited.then((code) => (clearInterval(poll), clearTimeout(timer), fail(new Error(`${command} exited (${code}) before it was ready:\n${out}`))));
    });
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  return { child, output: () => out, stop: async () => (child.kill('SIGTERM'), await exited) };
}
