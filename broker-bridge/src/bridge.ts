import type { Topics } from '../../common/protocol/topics.js';
import type { Subscription, Transport } from '../../common/transport/transport.js';
import type { EnrollmentLogger, EnrollmentService } from './enrollment/enrollment-service.js';

/**
 * The bridge's MQTT side: subscribes to device requests, hands each to its service and publishes the
 * reply to the requesting device's own topic; publishes the retained trust bundle. Handlers run
 * concurrently (each reply is independent); the services serialize what must be serialized.
 *
 * `sharedGroup` subscribes through an MQTT 5 shared subscription (`$share/<group>/…`). Several
 * instances also need the challenge state and inventory in a shared store, which does not exist yet
 * (see README).
 */
export interface BridgeOptions {
  readonly transport: Transport;
  readonly topics: Topics;
  readonly enrollment: EnrollmentService;
  readonly trustBundlePems: readonly string[];
  readonly sharedGroup?: string;
  readonly logger?: EnrollmentLogger;
}

export class Bridge {
  readonly #o: BridgeOptions;
  readonly #subs: Subscription[] = [];
  #pending = new Set<Promise<void>>();

  constructor(options: BridgeOptions) {
    this.#o = options;
  }

  async start(): Promise<void> {
    const { transport, topics } = this.#o;
    await transport.connect();
    await transport.publish(topics.fleet('trustBundle'), Buffer.from(JSON.stringify({ v: 1, roots: this.#o.trustBundlePems })), {
      qos: 1,
      retain: true,
    });
    for (const filter of this.#o.enrollment.filters()) {
      const subscribed = this.#o.sharedGroup ? `$share/${this.#o.sharedGroup}/${filter}` : filter;
      this.#subs.push(
        await transport.subscribe(subscribed, (msg) => {
          const work = this.#dispatch(msg.topic, msg.payload);
          this.#pending.add(work);
          void work.finally(() => this.#pending.delete(work));
        }),
      );
    }
  }

  async #dispatch(topic: string, payload: Buffer): Promise<void> {
    try {
      const reply = await this.#o.enrollment.handle(topic, payload);
      if (reply) await this.#o.transport.publish(reply.topic, reply.payload, { qos: 1 });
    } catch (e) {
      this.#o.logger?.error({ topic, err: e }, 'failed to answer a device request');
    }
  }

  /** Stops taking requests, lets in-flight ones finish, then disconnects. */
  async stop(): Promise<void> {
    for (const s of this.#subs.splice(0)) await s.unsubscribe().catch(() => undefined);
    await Promise.allSettled([...this.#pending]);
    await this.#o.transport.close();
  }
}

