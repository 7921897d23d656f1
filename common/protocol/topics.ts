import { CodedError } from '../coded-error.js';

/**
 * Topic layout (relative to a configurable base, default `fleet/v1`). A device's id is the identity
 * the broker authenticated (client id on the enrollment listener, certificate CN on the device
 * listener); the broker ACLs confine each client to `<base>/devices/<own id>/…`.
 */
export const DEFAULT_BASE_TOPIC = 'fleet/v1';

/** Device ids go into topics, URIs and certificate names: a conservative alphabet, no MQTT wildcards. */
export const DEVICE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function isDeviceId(id: string): boolean {
  return DEVICE_ID_PATTERN.test(id);
}

/** Per-device topic suffixes and who publishes them. */
export const DEVICE_TOPICS = {
  enroll: 'enroll', // device → bridge
  enrollChallenge: 'enroll/challenge', // bridge → device
  enrollProof: 'enroll/proof', // device → bridge
  enrollAccepted: 'enroll/accepted', // bridge → device
  enrollRejected: 'enroll/rejected', // bridge → device
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
} as const;

/** Answer topics that carry a rejection envelope instead of a body. */
export const REJECTION_TOPICS = ['enrollRejected', 'rotateRejected'] as const;
export type RejectionTopic = (typeof REJECTION_TOPICS)[number];

export type DeviceTopic = keyof typeof DEVICE_TOPICS;

/** Fleet-wide retained topics, read-only for devices. */
export const FLEET_TOPICS = {
  trustBundle: 'trust-bundle',
} as const;

export class Topics {
  readonly base: string;
  constructor(base: string = DEFAULT_BASE_TOPIC) {
    if (!/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/.test(base)) {
      throw new CodedError('TOPIC_INVALID_BASE', `invalid base topic ${JSON.stringify(base)}`);
    }
    this.base = base;
  }

  device(id: string, topic: DeviceTopic): string {
    if (!isDeviceId(id)) throw new CodedError('TOPIC_INVALID_DEVICE_ID', `invalid device id ${JSON.stringify(id)}`);
    return `${this.base}/devices/${id}/${DEVICE_TOPICS[topic]}`;
  }

  fleet(topic: keyof typeof FLEET_TOPICS): string {
    return `${this.base}/${FLEET_TOPICS[topic]}`;
  }

  /** Subscription filter matching `topic` for every device (the bridge's side). */
  allDevices(topic: DeviceTopic): string {
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
      if (s === suffix) return { deviceId, topic: kind as DeviceTopic };
    }
    return undefined;
  }
}
