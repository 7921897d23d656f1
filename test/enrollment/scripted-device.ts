import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { buildCsr } from '../../agent/src/csr.js';
import { buildCsr as buildSoftCsr } from '../../broker-bridge/src/ca/test-util.js';
import { decode, encode, type MessageOf } from '../../common/protocol/messages.js';
import type { Topics } from '../../common/protocol/topics.js';
import { MqttTransport } from '../../common/transport/mqtt-transport.js';
import type { Transport } from '../../common/transport/transport.js';
import type { KeyBlobs, Tpm, TpmKey } from '../../native/lib/tpm.js';
import { marshalPublic2b, type EccPublic } from '../../native/lib/wire/public.js';
import { identityKeyTemplate } from '../../native/lib/wire/templates.js';

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

const clientIds = new WeakMap<Transport, string>();

/**
 * Connects to the enrollment listener under a fresh random `enr-…` client id (the broker confines it
 * to that id's enroll topics); `label` only names the connection in test failures.
 */
export async function connectEnrollment(url: string, caPem: string, label: string, clientId = `enr-${randomBytes(16).toString('base64url')}`): Promise<Transport> {
  void label;
  const t = new MqttTransport({ url, clientId, tls: { ca: caPem }, reconnectPeriodMs: 0 });
  await t.connect();
  clientIds.set(t, clientId);
  return t;
}

/** The enrollment client id a transport from connectEnrollment uses. */
export function enrollClientIdOf(t: Transport): string {
  const id = clientIds.get(t);
  if (!id) throw new Error('not an enrollment transport from connectEnrollment');
  return id;
}

export type Answer =
  | { kind: 'challenge'; msg: MessageOf<'enrollChallenge'> }
  | { kind: 'accepted'; msg: MessageOf<'enrollAccepted'> }
  | { kind: 'rejected'; msg: MessageOf<'enrollRejected'> };

/**
 * Publishes a raw payload on the transport's enrollment topic and waits for the bridge's answer for
 * `requestId`. `deviceId` is only for messages: the topic is the client id's.
 */
export async function exchange(
  t: Transport,
  topics: Topics,
  _deviceId: string,
  topic: 'enroll' | 'enrollProof',
  payload: Buffer,
  requestId: string,
  timeoutMs = 10_000,
): Promise<Answer> {
  const clientId = enrollClientIdOf(t);
  const answer = new Promise<Answer>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer to ${topic} ${requestId} within ${timeoutMs} ms`)), timeoutMs);
    const done = (a: Answer) => {
      clearTimeout(timer);
      resolve(a);
    };
    const subs = [
      t.subscribe(topics.enrollment(clientId, 'enrollChallenge'), (m) => {
        const msg = decode('enrollChallenge', m.payload);
        if (msg.requestId === requestId) done({ kind: 'challenge', msg });
      }),
      t.subscribe(topics.enrollment(clientId, 'enrollAccepted'), (m) => {
        const msg = decode('enrollAccepted', m.payload);
        if (msg.requestId === requestId) done({ kind: 'accepted', msg });
      }),
      t.subscribe(topics.enrollment(clientId, 'enrollRejected'), (m) => {
        const msg = decode('enrollRejected', m.payload);
        if (msg.requestId === requestId) done({ kind: 'rejected', msg });
      }),
    ];
    void Promise.all(subs).then(async (s) => {
      await t.publish(topics.enrollment(clientId, topic), payload, { qos: 1 });
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

/**
 * A software key dressed up as a TPM identity key: its public area claims fixedTPM and the rest of the
 * identity template, and its CSR is valid (signed over the request info with SHA-256, once). A TPM can
 * never certify it, so the only thing that refuses it is the key certification.
 */
export function softwareKeyPosingAsTpmKey(deviceId: string): { keyPublic: Buffer; csr: Buffer; spki: Buffer } {
  const soft = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const jwk = soft.publicKey.export({ format: 'jwk' });
  const pub: EccPublic = { ...identityKeyTemplate(), x: Buffer.from(jwk.x!, 'base64url'), y: Buffer.from(jwk.y!, 'base64url') };
  const spki = soft.publicKey.export({ type: 'spki', format: 'der' });
  const csr = buildSoftCsr({ privateKey: soft.privateKey, spki, commonNames: [deviceId] });
  return { keyPublic: marshalPublic2b(pub), csr, spki };
}

/** A TPM key kept only as blobs and public data; loaded for one operation at a time. */
export interface StoredKey {
  readonly blobs: KeyBlobs;
  readonly publicArea: Buffer;
  readonly name: Buffer;
  readonly spki: Buffer;
}

/**
 * Drives one swtpm for a scripted device without running out of its three object slots: every key is
 * created, flushed and kept as blobs, and each operation loads what it needs and flushes it after.
 */
export class ScriptedTpm {
  readonly tpm: Tpm;
  #ekKind: 'rsa' | 'ecc' | undefined;
  constructor(tpm: Tpm) {
    this.tpm = tpm;
  }

  async #created(make: (srk: TpmKey) => Promise<{ key: TpmKey; blobs: KeyBlobs }>): Promise<StoredKey> {
    const { key, blobs } = await make(await this.tpm.ensureSrk());
    await this.tpm.flush(key);
    return { blobs, publicArea: key.publicArea, name: key.name, spki: key.spki };
  }

  createAk(): Promise<StoredKey> {
    return this.#created((srk) => this.tpm.createAttestationKey(srk));
  }

  createKey(): Promise<StoredKey> {
    return this.#created((srk) => this.tpm.createIdentityKey(srk));
  }

  async #with<T>(keys: readonly StoredKey[], fn: (loaded: TpmKey[]) => Promise<T>): Promise<T> {
    const srk = await this.tpm.ensureSrk();
    const loaded: TpmKey[] = [];
    try {
      for (const k of keys) loaded.push(await this.tpm.loadKey(srk, k.blobs));
      return await fn(loaded);
    } finally {
      for (const k of loaded) await this.tpm.flush(k);
    }
  }

  /** TPM2_Certify(key, ak, nonce). */
  certify(key: StoredKey, ak: StoredKey, nonce: Buffer): Promise<{ certifyInfo: Buffer; certifySignature: Buffer }> {
    return this.#with([key, ak], async ([k, a]) => {
      const att = await this.tpm.certify(k!, a!, nonce);
      return { certifyInfo: att.attest, certifySignature: att.signature };
    });
  }

  /** A CSR for `key` with subject CN=`deviceId`, signed inside the TPM. */
  csr(key: StoredKey, deviceId: string): Promise<Buffer> {
    return this.#with([key], ([k]) => buildCsr(deviceId, key.spki, async (d) => (await this.tpm.sign(k!, d)).der));
  }

  async ekKind(): Promise<'rsa' | 'ecc'> {
    return (this.#ekKind ??= (await this.tpm.readEkCertificate('ecc')) ? 'ecc' : 'rsa');
  }

  /** The EK material an enroll request carries. */
  async ek(): Promise<{ ekKind: 'rsa' | 'ecc'; ekCertificate: Buffer; ekPublic: Buffer; ekSpki: Buffer }> {
    const ekKind = await this.ekKind();
    const ekCertificate = (await this.tpm.readEkCertificate(ekKind))!;
    const ek = await this.tpm.createEk(ekKind);
    await this.tpm.flush(ek);
    return { ekKind, ekCertificate, ekPublic: ek.publicArea, ekSpki: ek.spki };
  }

  /** An enroll body for this TPM's EK, `ak` and `key` (token or re-attestation). */
  async enrollBody(deviceId: string, ak: StoredKey, key: StoredKey, auth: { token: string } | { mode: 'reattest' }): Promise<EnrollBody> {
    const { ekKind, ekCertificate, ekPublic } = await this.ek();
    return { deviceId, ...auth, ekKind, ekCertificate, ekPublic, akPublic: ak.publicArea, keyPublic: key.publicArea, csr: await this.csr(key, deviceId) };
  }

  /** The honest answer to an enrollment challenge: activate the credential with the EK, certify `key`. */
  async answer(ak: StoredKey, key: StoredKey, c: MessageOf<'enrollChallenge'>['body']): Promise<ProofBody> {
    const ekKind = await this.ekKind();
    return this.#with([ak, key], async ([a, k]) => {
      const ek = await this.tpm.createEk(ekKind);
      try {
        const secret = await this.tpm.activateCredential(a!, ek, c.credentialBlob, c.encryptedSecret);
        const att = await this.tpm.certify(k!, a!, c.nonce);
        return { challengeId: c.challengeId, secret, certifyInfo: att.attest, certifySignature: att.signature };
      } finally {
        await this.tpm.flush(ek);
      }
    });
  }
}
