import { isCodedError } from '../../../common/coded-error.js';
import { DEVICE_ID_PATTERN, type Topics } from '../../../common/protocol/topics.js';
import { literal, object, oneOf, optional, parseMessage, str } from '../../../common/protocol/schema.js';
import type { RequestHandler, MessageMeta } from '../bridge.js';
import type { Reply } from '../enrollment/enrollment-service.js';
import { REVOCATION_REASONS } from '../ca/crl.js';
import type { RevocationService } from './revocation-service.js';

/**
 * Operator command: revoke a device or a serial, over the operator's own mutual-TLS session.
 *   `<base>/operators/<op id>/commands/revoke`        operator → bridge (QoS1)
 *   `<base>/operators/<op id>/commands/revoke/reply`  bridge → operator
 * `<op id>` is the operator certificate's CN without `role:operator:`; the ACL (`user role:operator:<id>`)
 * lets each operator write only its own command topic, so the topic names an authenticated operator.
 * TODO(common/protocol): move OPERATOR_TOPICS, the schemas and the size limit into topics.ts/messages.ts.
 */
export const OPERATOR_REVOKE_MAX_BYTES = 1024;
const OPERATOR_ID = /^[A-Za-z0-9._-]{1,64}$/;

export const operatorRevokeRequest = object({
  v: literal(1),
  requestId: str({ min: 1, max: 64, pattern: /^[A-Za-z0-9._-]+$/ }),
  deviceId: optional(str({ max: 64, pattern: DEVICE_ID_PATTERN })),
  serial: optional(str({ max: 40, pattern: /^[0-9A-Fa-f]{1,40}$/ })),
  reason: oneOf(REVOCATION_REASONS),
});

/** Reply: `{ v:1, requestId, ok:true, serials, crlNumber }` or `{ v:1, requestId?, ok:false, code, message }`. */
export function operatorRevokeTopics(topics: Topics, operatorId: string): { command: string; reply: string } {
  const command = `${topics.base}/operators/${operatorId}/commands/revoke`;
  return { command, reply: `${command}/reply` };
}

export class OperatorRevokeHandler implements RequestHandler {
  readonly #topics: Topics;
  readonly #revocation: RevocationService;
  readonly #done = new Map<string, Buffer>();

  constructor(o: { topics: Topics; revocation: RevocationService }) {
    this.#topics = o.topics;
    this.#revocation = o.revocation;
  }

  filters(): string[] {
    return [`${this.#topics.base}/operators/+/commands/revoke`];
  }

  async handle(topic: string, payload: Buffer, meta?: MessageMeta): Promise<Reply | undefined> {
    if (meta?.retain) return undefined; // a retained command is never a live request
    const op = topic.slice(this.#topics.base.length + 1).split('/')[1] ?? '';
    if (!OPERATOR_ID.test(op)) return undefined;
    const replyTopic = operatorRevokeTopics(this.#topics, op).reply;
    let requestId: string | undefined;
    try {
      const req = parseMessage(payload, operatorRevokeRequest, OPERATOR_REVOKE_MAX_BYTES);
      requestId = req.requestId;
      // A redelivered command (QoS1) gets the answer it got the first time.
      const cached = this.#done.get(`${op}\n${req.requestId}`);
      if (cached) return { topic: replyTopic, payload: cached };
      if ((req.deviceId === undefined) === (req.serial === undefined)) {
        return { topic: replyTopic, payload: fail(requestId, 'REVOCATION_BAD_REQUEST', 'give exactly one of deviceId and serial') };
      }
      const r = req.deviceId !== undefined ? await this.#revocation.revokeDevice(req.deviceId, req.reason) : await this.#revocation.revokeSerial(req.serial!, req.reason);
      const out = Buffer.from(JSON.stringify({ v: 1, requestId, ok: true, serials: r.serials, crlNumber: r.crlNumber.toString(), enforced: r.enforced }));
      this.#done.set(`${op}\n${req.requestId}`, out);
      if (this.#done.size > 1024) this.#done.delete(this.#done.keys().next().value!);
      return { topic: replyTopic, payload: out };
    } catch (e) {
      const code = isCodedError(e) ? e.code : 'INTERNAL';
      return { topic: replyTopic, payload: fail(requestId, code, isCodedError(e) ? e.message : 'internal error') };
    }
  }
}

function fail(requestId: string | undefined, code: string, message: string): Buffer {
  return Buffer.from(JSON.stringify({ v: 1, ...(requestId ? { requestId } : {}), ok: false, code, message: message.slice(0, 200) }));
}
