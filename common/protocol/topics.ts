import { CodedError } from '../coded-error.js';

/**
 * Topic layout (relative to a configurable base, default `fleet/v1`).
 * - Enrollment (server-authenticated TLS, no client certificate): `<base>/enroll/<client id>/…`, where
 *   the client id is a random per-attempt `enr-…` id. Nobody can claim a device's identity on this
 *   listener: the device id travels in the (token- and EK-checked) payload, and another client can
 *   neither read nor answer a device's challenge without guessing its client id.
 * - Everything else (mutual TLS): `<base>/devices/<device id>/…`, the device id being the certificate
 *   CN the broker authenticated; the ACLs confine each device to its own topics.
 * Every client id starts with `enr-` (the broker refuses others); on the mutual-TLS listener the broker
 * replaces it with the certificate CN, so no client can take over another's session.
 */
export const DEFAULT_BASE_TOPIC = 'fleet/v1';

/** Device ids go into topics, URIs and certificate names: a conservative alphabet, no MQTT wildcards. */
export const DEVICE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function isDeviceId(id: string): boolean {
  return DEVICE_ID_PATTERN.test(id);
}

/** The prefix every MQTT client id must have (the broker's `clientid_prefixes`). */
export const CLIENT_ID_PREFIX = 'enr-';
/** An enrollment attempt's client id: `enr-` and 22–60 random base64url characters. */
export const ENROLL_CLIENT_ID_PATTERN = /^enr-[A-Za-z0-9_-]{22,60}$/;

/** Enrollment message kinds and their suffix under `<base>/enroll/<client id>/`. */
export const ENROLL_TOPICS = {
  enroll: 'request', // device → bridge
  enrollChallenge: 'challenge', // bridge → device
  enrollProof: 'proof', // device → bridge
  enrollAccepted: 'accepted', // bridge → device
  enrollRejected: 'rejected', // bridge → device
} as const;

export type EnrollTopic = keyof typeof ENROLL_TOPICS;

/** Per-device topic suffixes (mutual-TLS listener) and who publishes them. */
export const DEVICE_TOPICS = {
  ...ENROLL_TOPICS,
  status: 'status', // device → fleet, retained; last will marks offline
  // Rotation: over the device's own mutual-TLS session (never the enrollment listener).
  rotateBegin: 'rotate/begin', // device → bridge: ask for a fresh nonce
  rotateChallenge: 'rotate/challenge', // bridge → device: the nonce the AK must certify the new key over
  rotateRequest: 'rotate/request', // device → bridge: certify evidence + CSR of the new key
  rotateAccepted: 'rotate/accepted', // bridge → device: the new certificate
  rotateConfirm: 'rotate/confirm', // device → bridge: the new identity works; retire the old one
  rotateConfirmed: 'rotate/confirmed', // bridge → device
  rotateRejected: 'rotate/rejected', // bridge → device (answer to begin, request or confirm)
  events: 'events', // device → bridge: outbox events, QoS1, in order, deduplicated by id
  eventsAck: 'events/ack', // bridge → device: the event (requestId) is in the inventory; the outbox may drop it
  // Fleet → device commands (an operator's rotate-now / reattest), retained so an offline device gets
  // the newest when it connects; the device runs each command id once and drops expired ones.
  command: 'commands', // bridge → device, retained
  // Clock check: the device asks, the bridge answers with its clock (agent check, skew reports).
  timeRequest: 'time/request', // device → bridge
  timeReply: 'time/reply', // bridge → device
} as const;

/** Answer topics that carry a rejection envelope instead of a body. */
export const REJECTION_TOPICS = ['enrollRejected', 'rotateRejected'] as const;
export type RejectionTopic = (typeof REJECTION_TOPICS)[number];

/** Every message kind of the protocol (enrollment kinds live under `enroll/<client id>/`, see Topics). */
export type DeviceTopic = keyof typeof DEVICE_TOPICS;

const isEnrollKind = (k: string): k is EnrollTopic => Object.hasOwn(ENROLL_TOPICS, k);

/**
 * Fleet-wide retained topics, read-only for devices; only the bridge publishes them. The CRL topics
 * (common/protocol/crl.ts): the complete CRL devices start from, in parts `crl/full/<i>`, and the
 * delta CRL against it, `crl/delta`. Everything under `crl/` is CRL distribution.
 */
export const FLEET_TOPICS = {
  trustBundle: 'trust-bundle',
  crlPart: 'crl/full', // bridge → devices, retained: part <i> of the complete CRL is `crl/full/<i>`
  crlDelta: 'crl/delta', // bridge → devices, retained: the delta CRL against that complete CRL
} as const;

/** The folder every CRL topic lives under. */
export const CRL_TOPIC_ROOT = 'crl';

export class Topics {
  readonly base: string;
  constructor(base: string = DEFAULT_BASE_TOPIC) {
    if (!/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/.test(base)) {
      throw new CodedError('TOPIC_INVALID_BASE', `invalid base topic ${JSON.stringify(base)}`);
    }
    this.base = base;
  }

  device(id: string, topic: DeviceTopic): string {
    if (isEnrollKind(topic)) throw new CodedError('TOPIC_INVALID_KIND', `${topic} is addressed by enrollment client id (Topics.enrollment)`);
    if (!isDeviceId(id)) throw new CodedError('TOPIC_INVALID_DEVICE_ID', `invalid device id ${JSON.stringify(id)}`);
    return `${this.base}/devices/${id}/${DEVICE_TOPICS[topic]}`;
  }

  /** An enrollment topic of one attempt, addressed by its `enr-…` client id. */
  enrollment(clientId: string, topic: EnrollTopic): string {
    if (!ENROLL_CLIENT_ID_PATTERN.test(clientId)) throw new CodedError('TOPIC_INVALID_CLIENT_ID', `invalid enrollment client id ${JSON.stringify(clientId)}`);
    return `${this.base}/enroll/${clientId}/${ENROLL_TOPICS[topic]}`;
  }

  /** Subscription filter matching an enrollment topic for every attempt (the bridge's side). */
  allEnrollments(topic: EnrollTopic): string {
    return `${this.base}/enroll/+/${ENROLL_TOPICS[topic]}`;
  }

  /** Splits an incoming enrollment topic into client id and kind; undefined for anything else. */
  parseEnrollment(topic: string): { clientId: string; topic: EnrollTopic } | undefined {
    const prefix = `${this.base}/enroll/`;
    if (!topic.startsWith(prefix)) return undefined;
    const [clientId, suffix, ...rest] = topic.slice(prefix.length).split('/');
    if (rest.length > 0 || clientId === undefined || !ENROLL_CLIENT_ID_PATTERN.test(clientId)) return undefined;
    for (const [kind, s] of Object.entries(ENROLL_TOPICS)) {
      if (s === suffix) return { clientId, topic: kind as EnrollTopic };
    }
    return undefined;
  }

  /** A fleet topic; for `crlPart` use `crlPart(i)` (this returns the folder of the parts). */
  fleet(topic: keyof typeof FLEET_TOPICS): string {
    return `${this.base}/${FLEET_TOPICS[topic]}`;
  }

  /** Topic of part `index` (0-based) of the complete CRL. */
  crlPart(index: number): string {
    if (!Number.isSafeInteger(index) || index < 0) throw new CodedError('TOPIC_INVALID_KIND', `invalid CRL part index ${index}`);
    return `${this.base}/${FLEET_TOPICS.crlPart}/${index}`;
  }

  /** Subscription filter matching every part of the complete CRL. */
  allCrlParts(): string {
    return `${this.base}/${FLEET_TOPICS.crlPart}/+`;
  }

  /** Filter matching every CRL topic (parts and delta): what devices may read. */
  allCrl(): string {
    return `${this.base}/${CRL_TOPIC_ROOT}/#`;
  }

  /** The part index of a CRL part topic (decimal, no leading zeros); undefined for anything else. */
  parseCrlPart(topic: string): number | undefined {
    const prefix = `${this.base}/${FLEET_TOPICS.crlPart}/`;
    if (!topic.startsWith(prefix)) return undefined;
    const rest = topic.slice(prefix.length);
    if (!/^(0|[1-9][0-9]{0,5})$/.test(rest)) return undefined;
    return Number(rest);
  }

  /** Subscription filter matching `topic` for every device (the bridge's side). */
  allDevices(topic: Exclude<DeviceTopic, EnrollTopic>): string {
    return `${this.base}/devices/+/${DEVICE_TOPICS[topic]}`;
  }

  /** Splits an incoming device topic into device id and kind; undefined for anything else. */
  parseDevice(topic: string): { deviceId: string; topic: DeviceTopic } | undefined {
    const prefix = `${this.base}/devices/`;
    if (!topic.startsWith(prefix)) return undefined;
    const rest = topic.slice(prefix.length);
    const slash = rest.indexOf('/');
    if (slash <= 0) return undefined;
    const deviceId = rest.slice(0, slash);
    const suffix = rest.slice(slash + 1);
    if (!isDeviceId(deviceId)) return undefined;
    for (const [kind, s] of Object.entries(DEVICE_TOPICS)) {
      if (s === suffix && !isEnrollKind(kind)) return { deviceId, topic: kind as DeviceTopic };
    }
    return undefined;
  }
}
