import { CodedError, isCodedError } from '../../../common/coded-error.js';
import {
  OPERATOR_REPLY_CODES,
  allOperatorCommands,
  decodeOperatorReply,
  decodeOperatorRequest,
  encodeOperatorAccepted,
  encodeOperatorRefusal,
  operatorTopics,
  parseOperatorCommand,
  type OperatorCommand,
  type OperatorReplyCode,
  type OperatorRequestOf,
  type OperatorResultOf,
} from '../../../common/protocol/operator.js';
import type { Topics } from '../../../common/protocol/topics.js';
import type { MessageMeta, RequestHandler } from '../bridge.js';
import type { EnrollmentLogger } from '../enrollment/enrollment-service.js';
import { InFlight, type Reply } from '../enrollment/request-handling.js';
import { AnswerCache } from './answer-cache.js';

/**
 * Runs operator commands (protocol: common/protocol/operator.ts) behind the bridge: one subscription
 * per command it has an executor for, so several of these can sit behind one bridge as long as their
 * commands differ. For each message: retained → ignored; size, JSON and schema checked → the executor
 * → the accepted reply (checked against the reply schema before it leaves) or a coded refusal on the
 * operator's own reply topic. Internals go to the log, never to the wire.
 *
 * Idempotency: answers are remembered per (operator, command, requestId); a repeat (also one arriving
 * while the first runs) gets the first answer byte for byte. Commands that change something keep up
 * to 1024 answers; query answers (up to 32 KiB each) are bounded by bytes too, and a query repeated
 * after its answer was evicted is answered afresh (a query changes nothing). Refusals are not kept.
 */
export interface OperatorContext {
  /** The operator the topic names (the broker's ACL ties it to the certificate CN). */
  readonly operatorId: string;
}

export type OperatorExecutor<C extends OperatorCommand> = (req: OperatorRequestOf<C>, ctx: OperatorContext) => Promise<OperatorResultOf<C>>;
export type OperatorExecutors = { readonly [C in OperatorCommand]?: OperatorExecutor<C> };

/** Commands that only read. */
const QUERIES: ReadonlySet<OperatorCommand> = new Set<OperatorCommand>(['devices', 'device', 'certificates', 'history', 'campaign-status', 'campaigns']);

/** Codes an executor (or the services below it) may report that an operator sees as they are. */
const PASSED_THROUGH: ReadonlySet<string> = new Set(Object.keys(OPERATOR_REPLY_CODES).filter((c) => c !== 'INTERNAL'));
/** Codes of the parts below, as the operator sees them. */
const TRANSLATED: Readonly<Record<string, OperatorReplyCode>> = {
  INVENTORY_NOT_FOUND: 'DEVICE_NOT_FOUND',
  INVENTORY_REVOKED: 'DEVICE_REVOKED',
  // Retryable outages below the service: the CA backend, the broker files, the bridge's broker connection.
  CA_BACKEND_FAILED: 'UNAVAILABLE',
  CA_BUSY: 'UNAVAILABLE',
  REVOCATION_BROKER_FAILED: 'UNAVAILABLE',
  BRIDGE_STOPPED: 'UNAVAILABLE',
  TRANSPORT_NOT_CONNECTED: 'UNAVAILABLE',
  TRANSPORT_CONNECTION_LOST: 'UNAVAILABLE',
  TRANSPORT_TIMEOUT: 'UNAVAILABLE',
  TRANSPORT_CLOSED: 'UNAVAILABLE',
};

export class OperatorCommandHandler implements RequestHandler {
  readonly #topics: Topics;
  readonly #executors: OperatorExecutors;
  readonly #logger: EnrollmentLogger | undefined;
  readonly #changes = new AnswerCache({ maxEntries: 1024, maxBytes: 16 * 1024 * 1024 });
  readonly #queries = new AnswerCache({ maxEntries: 256, maxBytes: 2 * 1024 * 1024 });
  readonly #inFlight = new InFlight();

  constructor(o: { topics: Topics; executors: OperatorExecutors; logger?: EnrollmentLogger }) {
    this.#topics = o.topics;
    this.#executors = o.executors;
    this.#logger = o.logger;
  }

  /** The commands this handler answers. */
  commands(): OperatorCommand[] {
    return (Object.keys(this.#executors) as OperatorCommand[]).filter((c) => this.#executors[c] !== undefined);
  }

  filters(): string[] {
    return this.commands().map((c) => allOperatorCommands(this.#topics, c));
  }

  async handle(topic: string, payload: Buffer, meta?: MessageMeta): Promise<Reply | undefined> {
    if (meta?.retain) return undefined; // a retained command is never a live request
    const parsed = parseOperatorCommand(this.#topics, topic);
    if (!parsed || !this.#executors[parsed.command]) return undefined;
    return this.#run(parsed.command, parsed.operatorId, payload);
  }

  async #run<C extends OperatorCommand>(command: C, operatorId: string, payload: Buffer): Promise<Reply> {
    const execute = this.#executors[command] as OperatorExecutor<C>;
    const replyTopic = operatorTopics(this.#topics, operatorId, command).reply;
    let req: OperatorRequestOf<C>;
    try {
      req = decodeOperatorRequest(command, payload);
    } catch (e) {
      return { topic: replyTopic, payload: this.#refusal(command, undefined, e, operatorId) };
    }
    const requestId = req.requestId;
    const key = `${operatorId}\n${command}\n${requestId}`;
    const cache = QUERIES.has(command) ? this.#queries : this.#changes;
    const cached = cache.get(key);
    if (cached) return { topic: replyTopic, payload: cached };
    return this.#inFlight.run(key, async () => {
      try {
        const out = encodeOperatorAccepted(command, requestId, await execute(req, { operatorId }));
        // The reply leaves only in its own shape: a record the schema does not cover is a bug here, not the operator's.
        try {
          decodeOperatorReply(command, out);
        } catch (e) {
          throw new CodedError('OPERATOR_REPLY_INVALID', `the ${command} reply fails its schema`, { cause: e });
        }
        cache.set(key, out);
        const target = req as { deviceId?: string; serial?: string };
        this.#logger?.info({ operator: operatorId, command, requestId, deviceId: target.deviceId, serial: target.serial }, `operator ${command}`);
        return { topic: replyTopic, payload: out };
      } catch (e) {
        return { topic: replyTopic, payload: this.#refusal(command, requestId, e, operatorId) };
      }
    });
  }

  #refusal(command: OperatorCommand, requestId: string | undefined, e: unknown, operator: string): Buffer {
    const code = isCodedError(e) ? e.code : undefined;
    if (code !== undefined && PASSED_THROUGH.has(code)) return encodeOperatorRefusal(requestId, code as OperatorReplyCode, (e as Error).message);
    const as: OperatorReplyCode = (code !== undefined && TRANSLATED[code]) || 'INTERNAL';
    if (as === 'INTERNAL' || as === 'UNAVAILABLE') this.#logger?.error({ operator, command, requestId, code, err: e }, `operator ${command} failed`);
    return encodeOperatorRefusal(requestId, as, OPERATOR_REPLY_CODES[as].message);
  }
}
