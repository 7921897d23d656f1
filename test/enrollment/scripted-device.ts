import { randomBytes } from 'node:crypto';
import { buildCsr } from '../../agent/src/csr.js';
import { decode, encode, type MessageOf } from '../../common/protocol/messages.js';
import type { Topics } from '../../common/protocol/topics.js';
import { MqttTransport } from '../../common/transport/mqtt-transport.js';
import type { Transport } from '../../common/transport/transport.js';
import type { Tpm, TpmKey } from '../../native/lib/tpm.js';

export { buildCsr };

/**
 * A device driven step by step by a test: real TPM operations, real MQTT, but every field of every
 * message under the test's control, so attacks can be mounted one at a time. The product's device
 * side is agent/; this exists only to attack the bridge.
 */
export interface DeviceMaterial {
  readonly deviceId: string;
  readonly ekKind: 'rsa' | 'ecc';
  readonly ekCertificate: Buffer;
  readonly ek: TpmKey;
  readonly ak: TpmKey;
  readonly key: TpmKey;
  readonly csr: Buffer;
}

/** A CSR for a fresh TPM key that is then flushed (call before prepareDevice: swtpm has three slots). */
export async function csrForFreshKey(tpm: Tpm, deviceId: string): Promise<Buffer> {
  const srk = await tpm.ensureSrk();
  const key = (await tpm.createIdentityKey(srk)).key;
  try {
    return await buildCsr(deviceId, key.spki, async (d) => (await tpm.sign(key, d)).der);
  } finally {
    await tpm.flush(key);
  }
}

export async function prepareDevice(tpm: Tpm, deviceId: string): Promise<DeviceMaterial> {
  const srk = await tpm.ensureSrk();
  const ekKind = (await tpm.readEkCertificate('ecc')) ? 'ecc' : 'rsa';
  const ekCertificate = (await tpm.readEkCertificate(ekKind))!;
  // swtpm holds three objects and the persistent SRK needs one while creating: EK last.
  const ak = (await tpm.createAttestationKey(srk)).key;
  const key = (await tpm.createIdentityKey(srk)).key;
  const ek = await tpm.createEk(ekKind);
  const csr = await buildCsr(deviceId, key.spki, async (d) => (await tpm.sign(key, d)).der);
  return { deviceId, ekKind, ekCertificate, ek, ak, key, csr };
}

export type EnrollBody = MessageOf<'enroll'>['body'];
export type ProofBody = MessageOf<'enrollProof'>['body'];

export function enrollBody(m: DeviceMaterial, token: string): EnrollBody {
  return {
    deviceId: m.deviceId,
    token,
    ekKind: m.ekKind,
    ekCertificate: m.ekCertificate,
    ekPublic: m.ek.publicArea,
    akPublic: m.ak.publicArea,
    keyPublic: m.key.publicArea,
    csr: m.csr,
  };
}

/** Connects to the enrollment listener as `clientId` (the broker confines it to its own topics). */
export async function connectEnrollment(url: string, caPem: string, clientId: string): Promise<Transport> {
  const t = new MqttTransport({ url, clientId, tls: { ca: caPem }, reconnectPeriodMs: 0 });
  await t.connect();
  return t;
}

export type Answer =
  | { kind: 'challenge'; msg: MessageOf<'enrollChallenge'> }
  | { kind: 'accepted'; msg: MessageOf<'enrollAccepted'> }
  | { kind: 'rejected'; msg: MessageOf<'enrollRejected'> };

/** Publishes a raw payload on a device topic and waits for the bridge's answer for `requestId`. */
export async function exchange(
  t: Transport,
  topics: Topics,
  deviceId: string,
  topic: 'enroll' | 'enrollProof',
  payload: Buffer,
  requestId: string,
  timeoutMs = 10_000,
): Promise<Answer> {
  const answer = new Promise<Answer>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer to ${topic} ${requestId} within ${timeoutMs} ms`)), timeoutMs);
    const done = (a: Answer) => {
      clearTimeout(timer);
      resolve(a);
    };
    const subs = [
      t.subscribe(topics.device(deviceId, 'enrollChallenge'), (m) => {
        const msg = decode('enrollChallenge', m.payload);
        if (msg.requestId === requestId) done({ kind: 'challenge', msg });
      }),
      t.subscribe(topics.device(deviceId, 'enrollAccepted'), (m) => {
        const msg = decode('enrollAccepted', m.payload);
        if (msg.requestId === requestId) done({ kind: 'accepted', msg });
      }),
      t.subscribe(topics.device(deviceId, 'enrollRejected'), (m) => {
        const msg = decode('enrollRejected', m.payload);
        if (msg.requestId === requestId) done({ kind: 'rejected', msg });
      }),
    ];
    void Promise.all(subs).then(async (s) => {
      await t.publish(topics.device(deviceId, topic), payload, { qos: 1 });
      void answer.finally(() => s.forEach((x) => void x.unsubscribe().catch(() => undefined)));
    }, reject);
  });
  return answer;
}

export const newRequestId = () => randomBytes(12).toString('base64url');

export function enrollPayload(requestId: string, body: EnrollBody): Buffer {
  return encode('enroll', requestId, Date.now(), body);
}

export function proofPayload(requestId: string, body: ProofBody): Buffer {
  return encode('enrollProof', requestId, Date.now(), body);
}

/** The honest answer to a challenge: activate the credential, certify the key with the nonce. */
export async function answerChallenge(tpm: Tpm, m: DeviceMaterial, c: MessageOf<'enrollChallenge'>['body']): Promise<ProofBody> {
  const secret = await tpm.activateCredential(m.ak, m.ek, c.credentialBlob, c.encryptedSecret);
  const att = await tpm.certify(m.key, m.ak, c.nonce);
  return { challengeId: c.challengeId, secret, certifyInfo: att.attest, certifySignature: att.signature };
}
