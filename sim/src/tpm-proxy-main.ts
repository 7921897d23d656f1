/**
 * `node dist/tpm-proxy.mjs`: the faulty-TPM proxy (sim/src/sim/tpm-proxy.ts) in a process of its own,
 * forked with an IPC channel by TpmProxyProcess (sim/src/sim/tpm-proxy-process.ts). It has to run
 * outside the agent's process: the agent signs its TLS handshakes synchronously inside OpenSSL, so a
 * proxy sharing the agent's event loop could not answer the very signature the loop is waiting for.
 *
 * argv: the swtpm command port, then optionally the rules as JSON. Messages in: `{ type: 'rules', id,
 * rules }`, `{ type: 'nv', id, index, fixture }` (fixture: base64 bytes, 'missing', or null for swtpm's
 * own contents), `{ type: 'stats', id }`. Messages out: `{ type: 'ready', port }` once listening, then `{ type:
 * 'ok' | 'stats' | 'error', id, ... }` per request. Exits when the channel closes or on SIGTERM.
 */
import { isCodedError } from '../../common/coded-error.js';
import { TpmProxy, type TpmProxyRule } from './sim/tpm-proxy.js';

type Request =
  | { readonly type: 'rules'; readonly id: number; readonly rules: TpmProxyRule[] }
  | { readonly type: 'nv'; readonly id: number; readonly index: number; readonly fixture: string | null }
  | { readonly type: 'stats'; readonly id: number };

function send(m: object): void {
  if (process.connected) process.send!(m);
}

async function main(): Promise<void> {
  const target = Number(process.argv[2]);
  if (!Number.isInteger(target) || target < 1 || target > 65534) throw new Error(`usage: tpm-proxy <swtpm command port> [rules JSON], not ${process.argv[2]}`);
  const rules = process.argv[3] ? (JSON.parse(process.argv[3]) as TpmProxyRule[]) : [];
  const proxy = await TpmProxy.start(target, rules);
  const stop = () => void proxy.stop().finally(() => process.exit(0));
  process.on('disconnect', stop);
  process.on('SIGTERM', stop);
  process.on('message', (m: Request) => {
    try {
      if (m.type === 'rules') {
        proxy.setRules(Array.isArray(m.rules) ? m.rules : []);
        send({ type: 'ok', id: m.id });
      } else if (m.type === 'nv') {
        proxy.setNv(m.index, m.fixture === null ? undefined : m.fixture === 'missing' ? 'missing' : Buffer.from(m.fixture, 'base64'));
        send({ type: 'ok', id: m.id });
      } else if (m.type === 'stats') {
        const s = proxy.stats();
        send({ type: 'stats', id: m.id, commands: Object.fromEntries(s.commands), injected: s.injected, dropped: s.dropped });
      }
    } catch (e) {
      send({ type: 'error', id: m.id, code: isCodedError(e) ? e.code : 'TPM_PROXY_INVALID', message: (e as Error).message });
    }
  });
  send({ type: 'ready', port: proxy.port });
}

main().catch((e: unknown) => {
  process.stderr.write(`tpm-proxy: ${(e as Error).message}\n`);
  process.exit(1);
});
