import { isCodedError } from '../../../common/coded-error.js';
import {
  OPERATOR_REPLY_CODES,
  allOperatorCommands,
  decodeOperatorRevoke,
  encodeOperatorRefusal,
  encodeOperatorRevokeAccepted,
  operatorTopics,
  parseOperatorCommand,
  type OperatorReplyCode,
} from '../../../common/protocol/operator.js';
import type { Topics } from '../../../common/protocol/topics.js';
import type { MessageMeta, RequestHandler } from '../bridge.js';
import type { EnrollmentLogger } from '../enrollment/enrollment-service.js';
import { InFlight, type Reply } from '../enrollment/request-handling.js';
import type { RevocationService } from './revocation-service.js';

/**
 * The operator `revoke` command (protocol: common/protocol/operator.ts): revokes a device or a serial
 * through the RevocationService and answers on the operator's reply topic. Every failure is a coded
 * refusal; internals go to the log, not the wire.
 */
/** The revoke command and reply topics of one operator. */
export function operatorRevokeTopics(topics: Topics, operatorId: string): { command: string; reply: string } {
  return operatorTopics(topics, operatorId, 'revoke');
}

/** Answers remembered per (operator, requestId); the oldest go first. */
const REMEMBERED_ANSWERS = 1024;

/** Codes the RevocationService and CA report that an operator may see as they are. */
const PASSED_THROUGH: ReadonlySet<string> = new Set<OperatorReplyCode>([
  'SCHEMA_TOO_LARGE',
  'SCHEMA_NOT_JSON',
  'SCHEMA_INVALID',
  'REVOCATION_BAD_REQUEST',
  'REVOCATION_NOT_FOUND',
  'REVOCATION_STATE_INVALID',
  'REVOCATION_STOPPED',
]);
/** Retryable outages below the service: the CA backend, the broker files. */
const UNAVAILABLE: ReadonlySet<string> = new Set(['CA_BACKEND_FAILED', 'CA_BUSY', 'REVOCATION_BROKER_FAILED']);

export class OperatorRevokeHandler implements RequestHandler {
  readonly #topics: Topics;
  readonly #revocation: RevocationService;
  readonly #logger: EnrollmentLogger | undefined;
  readonly #done = new Map<string, Buffer>();
  readonly #inFlight = new InFlight();

  constructor(o: { topics: Topics; revocation: RevocationService; logger?: EnrollmentLogger }) {
    this.#topics = o.topics;
    this.#revocation = o.revocation;
    this.#logger = o.logger;
  }

  filters(): string[] {
    return [allOperatorCommands(this.#topics, 'revoke')];
  }

  async handle(topic: string, payload: Buffer, meta?: MessageMeta): Promise<Reply | undefined> {
    if (meta?.retain) return undefined; // a retained command is never a live request
    const parsed = parseOperatorCommand(this.#topics, topic);
    if (parsed?.command !== 'revoke') return undefined;
    const op = parsed.operatorId;
    const replyTopic = operatorRevokeTopics(this.#topics, op).reply;
    let req;
    try {
      req = decodeOperatorRevoke(payload);
    } catch (e) {
      return { topic: replyTopic, payload: this.#refusal(undefined, e, op) };
    }
    const key = `${op}\n${req.requestId}`;
    // A redelivered command (QoS1), also one arriving while the first still runs, gets the first answer.
    const cached = this.#done.get(key);
    if (cached) return { topic: replyTopic, payload: cached };
    return this.#inFlight.run(key, async () => {
      try {
        if ((req.deviceId === undefined) === (req.serial === undefined)) {
          return { topic: replyTopic, payload: encodeOperatorRefusal(req.requestId, 'REVOCATION_BAD_REQUEST', 'give exactly one of deviceId and serial') };
        }
        const r = req.deviceId !== undefined ? await this.#revocation.revokeDevice(req.deviceId, req.reason) : await this.#revocation.revokeSerial(req.serial!, req.reason);
        const out = encodeOperatorRevokeAccepted({ requestId: req.requestId, serials: [...r.serials], crlNumber: r.crlNumber.toString(), enforced: r.enforced });
        this.#done.set(key, out);
        if (this.#done.size > REMEMBERED_ANSWERS) this.#done.delete(this.#done.keys().next().value!);
        this.#logger?.info({ operator: op, requestId: req.requestId, deviceId: req.deviceId, serial: req.serial, reason: req.reason, serials: r.serials }, 'operator revoke');
        return { topic: replyTopic, payload: out };
      } catch (e) {
        return { topic: replyTopic, payload: this.#refusal(req.requestId, e, op) };
      }
    });
  }

  #refusal(requestId: string | undefined, e: unknown, operator: string): Buffer {
    const code = isCodedError(e) ? e.code : undefined;
    if (code !== undefined && PASSED_THROUGH.has(code)) return encodeOperatorRefusal(requestId, code as OperatorReplyCode, (e as Error).message);
    const as: OperatorReplyCode = code !== undefined && UNAVAILABLE.has(code) ? 'UNAVAILABLE' : 'INTERNAL';
    this.#logger?.error({ operator, requestId, code, err: e }, 'operator revoke failed');
    return encodeOperatorRefusal(requestId, as, OPERATOR_REPLY_CODES[as].message);
  }
}
