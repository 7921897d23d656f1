import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { track } from './registry.js';

/**
 * Stands in for systemd's notification socket: a python3 process (a tool we did not write) bound to an
 * AF_UNIX datagram socket, printing each datagram it receives as one JSON string per line. `address`
 * is what NOTIFY_SOCKET holds: a filesystem path, or '@name' for the abstract namespace.
 */
export interface NotifyReceiver {
  readonly address: string;
  /** Every datagram so far, with the time (Date.now()) this process read it. */
  readonly messages: readonly NotifyMessage[];
  /** Resolves the first message at index >= `from` that `match` accepts; fails after `timeoutMs`. */
  next(match: (m: NotifyMessage) => boolean, opts?: { from?: number; timeoutMs?: number }): Promise<NotifyMessage & { index: number }>;
  stop(): Promise<void>;
}

export interface NotifyMessage {
  readonly at: number;
  readonly text: string;
}

const RECEIVER = String.raw`
import json, socket, sys
address = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind('\0' + address[1:] if address.startswith('@') else address)
print('listening', flush=True)
while True:
    data = s.recv(65536)
    print(json.dumps(data.decode('utf-8', 'replace')), flush=True)
`;

export async function startNotifyReceiver(address: string): Promise<NotifyReceiver> {
  const child = spawn('python3', ['-u', '-c', RECEIVER, address], { stdio: ['ignore', 'pipe', 'pipe'] });
  const messages: NotifyMessage[] = [];
  let errors = '';
  let buffered = '';
  let listening!: () => void;
  const up = new Promise<void>((resolve) => (listening = resolve));
  child.stderr!.on('data', (d: Buffer) => (errors += d.toString()));
  child.stdout!.on('data', (d: Buffer) => {
    const at = Date.now();
    buffered += d.toString();
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (line === 'listening') listening();
      else messages.push({ at, text: JSON.parse(line) as string });
    }
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    child.kill('SIGTERM');
    await exited;
    if (address.startsWith('/')) rmSync(address, { force: true });
  };
  track({ stop });
  const timeout = setTimeout(() => child.kill('SIGKILL'), 15_000);
  const ended = await Promise.race([up.then(() => false), exited.then(() => true)]).finally(() => clearTimeout(timeout));
  if (ended) throw new Error(`the notify receiver on ${address} ended before listening: ${errors}`);
  return {
    address,
    messages,
    async next(match, opts = {}) {
      const end = Date.now() + (opts.timeoutMs ?? 20_000);
      for (;;) {
        const index = messages.findIndex((m, i) => i >= (opts.from ?? 0) && match(m));
        if (index >= 0) return { ...messages[index]!, index };
        if (Date.now() > end) throw new Error(`no matching notification within ${opts.timeoutMs ?? 20_000} ms; got ${JSON.stringify(messages.map((m) => m.text))}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    stop,
  };
}
