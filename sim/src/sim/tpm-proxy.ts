import { createHash } from 'node:crypto';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { CodedError } from '../../../common/coded-error.js';
import { freePorts } from '../../../common/managed-process.js';

/**
 * A faulty TPM in front of a well-behaved swtpm (issue 13): a TCP proxy for swtpm's two ports (the
 * command port P and the control port P+1, as the `swtpm:` TCTI uses them) that reads the TPM 2.0
 * command/response framing on the command port (Part 1 §18: tag, size, code) and applies rules per
 * command code:
 * - `latencyMs`: the response is held that long after swtpm answered (fixed, or drawn per command);
 * - `respond`: the command is not forwarded, the TPM "answers" a response code of our choice (RETRY,
 *   YIELDED, TESTING, LOCKOUT, FAILURE...), for the next `times` matching commands or always;
 * - `drop`: the connection is closed when a matching command arrives.
 * And NV fixtures (`setNv`): what an NV index the TPM has reports to NV_ReadPublic and NV_Read is
 * replaced by fixture bytes (an EK certificate with a chip's padding or prefix), or the index is
 * reported missing (TPM_RC_HANDLE), without touching swtpm's NV. NV_ReadPublic goes to swtpm and comes
 * back with the fixture's size and the Name recomputed from it (ESAPI checks it); NV_Read is answered
 * from the fixture (password sessions, as the addon and tpm2-tools read EK certificates).
 * Rules can be replaced while the proxy runs. Every device gets its own proxy on its own timers, so one
 * slow or faulty TPM never delays another. The control port is passed through untouched.
 */
export type TpmProxyErrorCode = 'TPM_PROXY_INVALID';

/** TPM 2.0 Part 2 §6.5.2 command codes used by the agent and the station. */
export const TPM_CC = {
  NV_Read: 0x14e,
  NV_ReadPublic: 0x169,
  ActivateCredential: 0x147,
  Certify: 0x148,
  CreatePrimary: 0x131,
  Create: 0x153,
  Load: 0x157,
  Sign: 0x15d,
  FlushContext: 0x165,
  GetCapability: 0x17a,
  ReadPublic: 0x173,
} as const;

/** TPM 2.0 Part 2 §6.6 response codes a real chip answers and a caller must handle. */
export const TPM_RC = {
  RETRY: 0x922,
  YIELDED: 0x908,
  TESTING: 0x90a,
  LOCKOUT: 0x921,
  FAILURE: 0x101,
} as const;

/** TPM_RC_HANDLE for the first handle: what a TPM answers for an NV index it does not have. */
const RC_HANDLE_1 = 0x18b;
/** TPM_RC_NV_RANGE: a read past the index's data. */
const RC_NV_RANGE = 0x146;
const TPM_RS_PW = 0x40000009;
const TPM_ST_SESSIONS = 0x8002;
const NAME_HASHES: Readonly<Record<number, string>> = { 0x0004: 'sha1', 0x000b: 'sha256', 0x000c: 'sha384', 0x000d: 'sha512' };

/** What an NV index reports through the proxy: these bytes, or that it does not exist. */
export type NvFixture = Buffer | 'missing';

export interface TpmProxyRule {
  /** The command this rule applies to; every command when absent. */
  readonly commandCode?: number;
  readonly latencyMs?: number | (() => number);
  /** Answer `rc` instead of forwarding; `times` matching commands (then the rule is spent), always when absent. */
  readonly respond?: { readonly rc: number; readonly times?: number };
  /** Close the connection on the next `times` matching commands (always when absent). */
  readonly drop?: { readonly times?: number };
}

export interface TpmProxyStats {
  /** Commands seen, by command code. */
  readonly commands: ReadonlyMap<number, number>;
  /** Response codes injected instead of forwarding. */
  readonly injected: number;
  readonly dropped: number;
}

const HEADER = 10;
/** A command larger than this is not a TPM command (swtpm's own limit is 4 KiB). */
const MAX_COMMAND = 64 * 1024;
const TPM_ST_NO_SESSIONS = 0x8001;

interface LiveRule {
  readonly rule: TpmProxyRule;
  respondLeft: number;
  dropLeft: number;
}

export class TpmProxy {
  readonly port: number;
  readonly #servers: Server[] = [];
  readonly #sockets = new Set<Socket>();
  #rules: LiveRule[] = [];
  readonly #nv = new Map<number, NvFixture>();
  readonly #commands = new Map<number, number>();
  #injected = 0;
  #dropped = 0;

  private constructor(port: number) {
    this.port = port;
  }

  /** The TCTI a device uses to reach its TPM through this proxy. */
  get tcti(): string {
    return `swtpm:host=127.0.0.1,port=${this.port}`;
  }

  /** Listens on two free consecutive loopback ports, forwarding to swtpm's `targetPort` and `targetPort + 1`. */
  static async start(targetPort: number, rules: readonly TpmProxyRule[] = []): Promise<TpmProxy> {
    for (let attempt = 0; ; attempt++) {
      const port = await freePorts(2);
      const proxy = new TpmProxy(port);
      proxy.setRules(rules);
      try {
        proxy.#servers.push(await listen(port, (c) => proxy.#command(c, targetPort)));
        proxy.#servers.push(await listen(port + 1, (c) => proxy.#passThrough(c, targetPort + 1)));
        return proxy;
      } catch (e) {
        await proxy.stop();
        if (attempt >= 5) throw e; // someone took a port between the check and the listen: new ports
      }
    }
  }

  /** Replaces the rules; the first rule that matches a command (and is not spent) applies. */
  setRules(rules: readonly TpmProxyRule[]): void {
    for (const r of rules) validate(r);
    this.#rules = rules.map((rule) => ({ rule, respondLeft: rule.respond?.times ?? Infinity, dropLeft: rule.drop?.times ?? Infinity }));
  }

  /**
   * What NV index `index` reports from now on (undefined: swtpm's own contents again). A fixture of
   * bytes applies to an index swtpm has (its attributes and auth stay swtpm's); 'missing' to any.
   */
  setNv(index: number, fixture: NvFixture | undefined): void {
    if (!Number.isInteger(index) || index >>> 24 !== 0x01) throw new CodedError<TpmProxyErrorCode>('TPM_PROXY_INVALID', `TPM proxy NV fixture: 0x${index.toString(16)} is not an NV index`);
    if (Buffer.isBuffer(fixture) && (fixture.length === 0 || fixture.length > 0xffff)) {
      throw new CodedError<TpmProxyErrorCode>('TPM_PROXY_INVALID', 'TPM proxy NV fixture: 1 to 65535 bytes');
    }
    if (fixture === undefined) this.#nv.delete(index);
    else this.#nv.set(index, Buffer.isBuffer(fixture) ? Buffer.from(fixture) : fixture);
  }

  stats(): TpmProxyStats {
    return { commands: new Map(this.#commands), injected: this.#injected, dropped: this.#dropped };
  }

  async stop(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await Promise.all(this.#servers.map((s) => new Promise((r) => s.close(r))));
  }

  /** Connects `client` to swtpm's `target` port; either side failing or closing ends both. */
  #connect(client: Socket, target: number): { upstream: Socket; kill: () => void } {
    const upstream = createConnection({ host: '127.0.0.1', port: target });
    const kill = () => {
      client.destroy();
      upstream.destroy();
    };
    for (const s of [client, upstream]) {
      this.#sockets.add(s);
      s.setNoDelay(true);
      s.on('close', () => this.#sockets.delete(s));
      s.on('error', kill);
      s.on('close', kill);
    }
    return { upstream, kill };
  }

  #passThrough(client: Socket, target: number): void {
    const { upstream } = this.#connect(client, target);
    client.pipe(upstream).pipe(client);
  }

  /** One command at a time, as a TPM takes them: read it whole, decide, answer, then the next. */
  #command(client: Socket, target: number): void {
    const { upstream, kill } = this.#connect(client, target);
    let fromClient = Buffer.alloc(0);
    let fromTpm = Buffer.alloc(0);
    // A forwarded command whose response is awaited (and changed by `patch`, for NV fixtures).
    let waiting: { delayMs: number; patch?: (response: Buffer) => Buffer } | undefined;
    let holding = false; // a response is being held (latency)

    const release = (response: Buffer, delayMs: number) => {
      holding = true;
      setTimeout(() => {
        holding = false;
        if (!client.destroyed) client.write(response);
        next();
      }, delayMs);
    };
    const next = () => {
      if (waiting || holding || fromClient.length < HEADER) return;
      const size = fromClient.readUInt32BE(2);
      if (size < HEADER || size > MAX_COMMAND) return kill(); // not TPM framing
      if (fromClient.length < size) return;
      const command = fromClient.subarray(0, size);
      fromClient = fromClient.subarray(size);
      const code = command.readUInt32BE(6);
      this.#commands.set(code, (this.#commands.get(code) ?? 0) + 1);
      const live = this.#rules.find((r) => matches(r, code));
      const delayMs = latencyOf(live?.rule);
      if (live?.rule.drop && live.dropLeft > 0) {
        live.dropLeft--;
        this.#dropped++;
        return kill();
      }
      if (live?.rule.respond && live.respondLeft > 0) {
        live.respondLeft--;
        this.#injected++;
        return release(rcResponse(live.rule.respond.rc), delayMs);
      }
      const nv = this.#nvFixtureFor(code, command);
      if (nv?.kind === 'answer') return release(nv.response, delayMs);
      waiting = nv?.kind === 'patch' ? { delayMs, patch: nv.patch } : { delayMs };
      upstream.write(command);
    };
    client.on('data', (d: Buffer) => {
      fromClient = Buffer.concat([fromClient, d]);
      next();
    });
    upstream.on('data', (d: Buffer) => {
      fromTpm = Buffer.concat([fromTpm, d]);
      if (!waiting || fromTpm.length < HEADER) return;
      const size = fromTpm.readUInt32BE(2);
      if (size < HEADER || size > MAX_COMMAND) return kill();
      if (fromTpm.length < size) return;
      const response = fromTpm.subarray(0, size);
      fromTpm = fromTpm.subarray(size);
      const { delayMs, patch } = waiting;
      waiting = undefined;
      release(patch ? patch(response) : response, delayMs);
    });
  }

  /** How a command touches an NV fixture: answered from it, forwarded and patched, or not at all. */
  #nvFixtureFor(code: number, command: Buffer): { kind: 'answer'; response: Buffer } | { kind: 'patch'; patch: (r: Buffer) => Buffer } | undefined {
    if (code !== TPM_CC.NV_ReadPublic && code !== TPM_CC.NV_Read) return undefined;
    // NV_ReadPublic: the index is the only handle; NV_Read: authHandle, then the index.
    const at = code === TPM_CC.NV_ReadPublic ? HEADER : HEADER + 4;
    if (command.length < at + 4) return undefined;
    const index = command.readUInt32BE(at);
    const fixture = this.#nv.get(index);
    if (fixture === undefined) return undefined;
    if (fixture === 'missing') return { kind: 'answer', response: rcResponse(code === TPM_CC.NV_ReadPublic ? RC_HANDLE_1 : 0x28b) };
    if (code === TPM_CC.NV_ReadPublic) return { kind: 'patch', patch: (r) => withDataSize(r, fixture.length) };
    return { kind: 'answer', response: nvReadResponse(command, fixture) };
  }
}

function rcResponse(rc: number): Buffer {
  const r = Buffer.alloc(HEADER);
  r.writeUInt16BE(TPM_ST_NO_SESSIONS, 0);
  r.writeUInt32BE(HEADER, 2);
  r.writeUInt32BE(rc, 6);
  return r;
}

/**
 * An NV_ReadPublic response with TPMS_NV_PUBLIC.dataSize set to `size` and the Name recomputed
 * (nameAlg ‖ H(TPMS_NV_PUBLIC)). Anything unexpected (an error, a malformed response) goes on as it is.
 */
function withDataSize(response: Buffer, size: number): Buffer {
  if (response.length < HEADER + 2 || response.readUInt32BE(6) !== 0) return response;
  const out = Buffer.from(response);
  const publicSize = out.readUInt16BE(HEADER);
  const pub = HEADER + 2;
  // nvIndex(4) nameAlg(2) attributes(4) authPolicy(2+n) dataSize(2)
  if (publicSize < 14 || pub + publicSize + 2 > out.length) return response;
  const nameAlg = out.readUInt16BE(pub + 4);
  const policySize = out.readUInt16BE(pub + 10);
  const dataSizeAt = pub + 12 + policySize;
  if (dataSizeAt + 2 !== pub + publicSize) return response;
  out.writeUInt16BE(size, dataSizeAt);
  const hash = NAME_HASHES[nameAlg];
  const nameAt = pub + publicSize;
  const nameSize = out.readUInt16BE(nameAt);
  if (!hash || nameAt + 2 + nameSize > out.length) return response;
  const digest = createHash(hash).update(out.subarray(pub, pub + publicSize)).digest();
  if (nameSize !== 2 + digest.length) return response;
  digest.copy(out, nameAt + 4);
  return out;
}

/**
 * NV_Read answered from `data`: TPM2B_MAX_NV_BUFFER of data[offset, offset + size), and a password
 * session's response (empty nonce, its attributes echoed, empty HMAC). Commands authorized otherwise,
 * or reads past the data, are answered as a TPM would refuse them.
 */
function nvReadResponse(command: Buffer, data: Buffer): Buffer {
  let p = HEADER + 8; // authHandle, nvIndex
  if (command.readUInt16BE(0) !== TPM_ST_SESSIONS || command.length < p + 4) return rcResponse(0x0c4); // TPM_RC_AUTH_MISSING
  const authSize = command.readUInt32BE(p);
  p += 4;
  const authEnd = p + authSize;
  if (authEnd + 4 > command.length) return rcResponse(0x095); // TPM_RC_COMMAND_SIZE
  const attributes: number[] = [];
  while (p < authEnd) {
    const handle = command.readUInt32BE(p);
    const nonceSize = command.readUInt16BE(p + 4);
    const attr = command.readUInt8(p + 6 + nonceSize);
    const hmacSize = command.readUInt16BE(p + 7 + nonceSize);
    if (handle !== TPM_RS_PW) return rcResponse(0x9a2); // not a password session: a fixture cannot answer its HMAC
    attributes.push(attr);
    p += 9 + nonceSize + hmacSize;
  }
  const size = command.readUInt16BE(authEnd);
  const offset = command.readUInt16BE(authEnd + 2);
  if (offset + size > data.length) return rcResponse(RC_NV_RANGE);
  const chunk = data.subarray(offset, offset + size);
  const params = Buffer.alloc(2 + chunk.length);
  params.writeUInt16BE(chunk.length, 0);
  chunk.copy(params, 2);
  const auth = Buffer.concat(attributes.map((a) => Buffer.from([0, 0, a & 0x01, 0, 0])));
  const out = Buffer.alloc(HEADER + 4 + params.length + auth.length);
  out.writeUInt16BE(TPM_ST_SESSIONS, 0);
  out.writeUInt32BE(out.length, 2);
  out.writeUInt32BE(0, 6);
  out.writeUInt32BE(params.length, HEADER);
  params.copy(out, HEADER + 4);
  auth.copy(out, HEADER + 4 + params.length);
  return out;
}

function matches(r: LiveRule, code: number): boolean {
  if (r.rule.commandCode !== undefined && r.rule.commandCode !== code) return false;
  // A rule whose fault is spent still applies its latency; one with only a spent fault is skipped.
  const faultSpent = (r.rule.respond !== undefined && r.respondLeft <= 0) || (r.rule.drop !== undefined && r.dropLeft <= 0);
  return !faultSpent || r.rule.latencyMs !== undefined;
}

function latencyOf(rule: TpmProxyRule | undefined): number {
  const l = rule?.latencyMs;
  const v = typeof l === 'function' ? l() : (l ?? 0);
  return Number.isFinite(v) && v > 0 ? Math.min(v, 60_000) : 0;
}

function validate(r: TpmProxyRule): void {
  const bad = (why: string): never => {
    throw new CodedError<TpmProxyErrorCode>('TPM_PROXY_INVALID', `TPM proxy rule: ${why}`);
  };
  if (r.commandCode !== undefined && (!Number.isInteger(r.commandCode) || r.commandCode < 0 || r.commandCode > 0xffffffff)) bad('commandCode must be a 32-bit command code');
  if (typeof r.latencyMs === 'number' && (!Number.isFinite(r.latencyMs) || r.latencyMs < 0 || r.latencyMs > 60_000)) bad(`latency must be 0–60000 ms, not ${r.latencyMs}`);
  if (r.respond && (!Number.isInteger(r.respond.rc) || r.respond.rc <= 0 || r.respond.rc > 0xffffffff)) bad('respond.rc must be a non-zero response code');
  for (const t of [r.respond?.times, r.drop?.times]) if (t !== undefined && (!Number.isInteger(t) || t < 0)) bad('times must be a non-negative integer');
  if (r.respond && r.drop) bad('a rule either responds or drops, not both');
}

function listen(port: number, onConnection: (s: Socket) => void): Promise<Server> {
  const server = createServer(onConnection);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}
