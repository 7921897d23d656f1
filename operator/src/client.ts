import { randomBytes } from 'node:crypto';
import { isCodedError } from '../../common/coded-error.js';
import {
  decodeOperatorReply,
  encodeOperatorRequest,
  operatorTopics,
  type OperatorAcceptedOf,
  type OperatorCommand,
  type OperatorRequestOf,
} from '../../common/protocol/operator.js';
import { CLIENT_ID_PREFIX, Topics } from '../../common/protocol/topics.js';
import { MqttTransport } from '../../common/transport/mqtt-transport.js';
import { request } from '../../common/transport/request.js';
import { OperatorCliError, OperatorRefusal } from './errors.js';
import type { ConnectionSettings } from './settings.js';

/** Attempts per command: the same bytes again after a silent third of the timeout (the bridge answers a repeat with its first answer). */
const ATTEMPTS = 3;

/**
 * One operator's MQTT session: publishes commands on its own command topics and waits for the
 * answer carrying the same requestId on the reply topic (the broker lets no one else read it).
 * The broker names the session by the certificate CN: a second session of the same operator takes
 * this one over.
 */
export class OperatorClient {
  readonly #transport: MqttTransport;
  readonly #topics: Topics;
  readonly #s: ConnectionSettings;

  private constructor(transport: MqttTransport, s: ConnectionSettings) {
    this.#transport = transport;
    this.#topics = new Topics(s.baseTopic);
    this.#s = s;
  }

  /** Connects; rejects with the transport's code (TRANSPORT_UNREACHABLE, TRANSPORT_TLS_FAILED, …). */
  static async connect(s: ConnectionSettings): Promise<OperatorClient> {
    const transport = new MqttTransport({
      url: s.broker,
      clientId: `${CLIENT_ID_PREFIX}op-${randomBytes(9).toString('base64url')}`,
      tls: { ca: s.caPem, cert: s.certPem, key: s.keyPem },
      connectTimeoutMs: s.timeoutMs,
      reconnectPeriodMs: 0,
      // Nothing here runs without a caller to tell; a dropped oversize reply ends in OPERATOR_TIMEOUT.
      onError: () => undefined,
    });
    try {
      await transport.connect();
    } catch (e) {
      await transport.close({ force: true }).catch(() => undefined);
      throw e;
    }
    return new OperatorClient(transport, s);
  }

  /**
   * Sends one command and resolves with the bridge's acceptance. Rejects OperatorRefusal (the
   * bridge's code), OPERATOR_TIMEOUT, OPERATOR_REPLY_INVALID, or a transport code.
   */
  async call<C extends OperatorCommand>(command: C, body: Omit<OperatorRequestOf<C>, 'v' | 'requestId'>): Promise<OperatorAcceptedOf<C>> {
    const requestId = randomBytes(12).toString('base64url');
    const t = operatorTopics(this.#topics, this.#s.operatorId, command);
    let msg;
    try {
      msg = await request(this.#transport, {
        requestTopic: t.command,
        payload: encodeOperatorRequest(command, { requestId, ...body } as Omit<OperatorRequestOf<C>, 'v'>),
        responseTopics: [t.reply],
        match: (m) => answers(m.payload, requestId),
        timeoutMs: Math.ceil(this.#s.timeoutMs / ATTEMPTS),
        retries: ATTEMPTS - 1,
      });
    } catch (e) {
      if (isCodedError(e) && e.code === 'TRANSPORT_TIMEOUT') {
        throw new OperatorCliError('OPERATOR_TIMEOUT', `no answer from the bridge within ${this.#s.timeoutMs / 1000} s (is the bridge running and serving operator commands on ${this.#s.baseTopic}?)`);
      }
      throw e;
    }
    let reply;
    try {
      reply = decodeOperatorReply(command, msg.payload);
    } catch (e) {
      throw new OperatorCliError('OPERATOR_REPLY_INVALID', `the bridge's ${command} reply is not valid: ${(e as Error).message}`);
    }
    if (reply.ok !== true) {
      const r = reply as { code: string; message: string; retryable: boolean };
      throw new OperatorRefusal(r.code, r.message, r.retryable);
    }
    return reply as OperatorAcceptedOf<C>;
  }

  close(): Promise<void> {
    return this.#transport.close();
  }
}

/** Whether a reply answers `requestId`: it names it, or it is a refusal of a command the bridge could not read (no requestId). */
function answers(payload: Buffer, requestId: string): boolean {
  try {
    const o = JSON.parse(payload.toString('utf8')) as { requestId?: unknown; ok?: unknown };
    return o.requestId === requestId || (o.requestId === undefined && o.ok === false);
  } catch {
    return false;
  }
}
