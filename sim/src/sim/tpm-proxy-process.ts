import { fork, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { CodedError } from '../../../common/coded-error.js';
import type { NvFixture, TpmProxyErrorCode, TpmProxyRule, TpmProxyStats } from './tpm-proxy.js';

/**
 * The faulty-TPM proxy in a child process (`dist/tpm-proxy.mjs`), for a TPM user in this process
 * whose event loop may block on the TPM: the agent's TLS signature runs synchronously in OpenSSL, so a
 * proxy on the same loop would deadlock. Rules are numbers only here (no latency functions).
 */
export class TpmProxyProcess {
  readonly port: number;
  readonly #child: ChildProcess;
  #next = 0;

  private constructor(child: ChildProcess, port: number) {
    this.#child = child;
    this.port = port;
  }

  get tcti(): string {
    return `swtpm:host=127.0.0.1,port=${this.port}`;
  }

  get pid(): number | undefined {
    return this.#child.pid;
  }

  static async start(targetPort: number, rules: readonly TpmProxyRule[] = []): Promise<TpmProxyProcess> {
    const child = fork(script(), [String(targetPort), JSON.stringify(rules)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const port = await new Promise<number>((resolve, reject) => {
      child.once('message', (m: { type: string; port?: number }) => (m.type === 'ready' && m.port ? resolve(m.port) : reject(new Error(`tpm-proxy said ${m.type} first`))));
      child.once('exit', (code) => reject(new CodedError<TpmProxyErrorCode>('TPM_PROXY_INVALID', `tpm-proxy exited with ${code} at start`)));
    });
    return new TpmProxyProcess(child, port);
  }

  setRules(rules: readonly TpmProxyRule[]): Promise<void> {
    return this.#request({ type: 'rules', rules }).then(() => undefined);
  }

  /** TpmProxy.setNv in the proxy process. */
  setNv(index: number, fixture: NvFixture | undefined): Promise<void> {
    const wire = fixture === undefined ? null : fixture === 'missing' ? 'missing' : fixture.toString('base64');
    return this.#request({ type: 'nv', index, fixture: wire }).then(() => undefined);
  }

  async stats(): Promise<TpmProxyStats> {
    const r = (await this.#request({ type: 'stats' })) as { commands: Record<string, number>; injected: number; dropped: number };
    return { commands: new Map(Object.entries(r.commands).map(([k, v]) => [Number(k), v])), injected: r.injected, dropped: r.dropped };
  }

  async stop(): Promise<void> {
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return;
    const exited = new Promise((r) => this.#child.once('exit', r));
    this.#child.kill('SIGTERM');
    await exited;
  }

  #request(body: object): Promise<unknown> {
    const id = ++this.#next;
    return new Promise((resolve, reject) => {
      const onMessage = (m: { id?: number; type: string; code?: string; message?: string }) => {
        if (m.id !== id) return;
        this.#child.off('message', onMessage);
        if (m.type === 'error') reject(new CodedError<TpmProxyErrorCode>('TPM_PROXY_INVALID', m.message ?? 'tpm-proxy refused the request'));
        else resolve(m);
      };
      this.#child.on('message', onMessage);
      this.#child.send({ ...body, id });
    });
  }
}

/** Next to the running bundle, else the repository's dist/ (tests run from the sources). */
function script(): string {
  const bundled = fileURLToPath(new URL('./tpm-proxy.mjs', import.meta.url));
  if (existsSync(bundled)) return bundled;
  const built = fileURLToPath(new URL('../../../dist/tpm-proxy.mjs', import.meta.url));
  if (existsSync(built)) return built;
  throw new CodedError<TpmProxyErrorCode>('TPM_PROXY_INVALID', `dist/tpm-proxy.mjs not found (npm run build)`);
}
