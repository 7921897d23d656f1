import { randomBytes, timingSafeEqual, X509Certificate } from 'node:crypto';
import { join } from 'node:path';
import type { Clock } from '../../../common/clock.js';
import { toPem } from '../../../common/der.js';
import type { RejectionCode } from '../../../common/protocol/errors.js';
import { decode, encode, encodeRejection, type EnrollRequest } from '../../../common/protocol/messages.js';
import { Topics } from '../../../common/protocol/topics.js';
import type { MemoryBroker } from '../../../common/transport/memory-transport.js';
import { MemoryTransport } from '../../../common/transport/memory-transport.js';
import type { IncomingMessage } from '../../../common/transport/transport.js';
import { parseAttest } from '../../../native/lib/wire/attest.js';
import { makeCredential } from '../../../native/lib/wire/make-credential.js';
import { objectName, parsePublic2b, publicToSpki, type TpmPublic } from '../../../native/lib/wire/public.js';
import { verifyTpmSignature } from '../../../native/lib/wire/signature.js';
import { createCa } from '../../../broker-bridge/src/ca/ca-setup.js';
import { CertificateIssuer } from '../../../broker-bridge/src/ca/issuer.js';
import { parseAndVerifyCsr } from '../../../broker-bridge/src/ca/csr.js';
import type { CaBackend } from '../../../broker-bridge/src/ca/ca-backend.js';

/**
 * A stand-in for the bridge's enrollment handler, on a MemoryBroker, for the agent's unit tests. It
 * verifies what matters to the device side for real (schema via decode(), a real MakeCredential
 * challenge, the activation secret, TPM2_Certify evidence and the TPM-signed CSR) and issues real
 * certificates from a file-key CA; tests script rejections and dropped messages. Like the bridge, it
 * answers a repeated requestId with its first answer. (The real bridge is tested in test/enrollment/.)
 */
export type ScriptedKind = 'enroll' | 'enrollProof';

export interface Received {
  readonly kind: ScriptedKind;
  readonly deviceId: string;
  /** The enrollment client id it came from. */
  readonly clientId: string;
  readonly requestId: string;
  readonly payload: Buffer;
}

type Scripted = { readonly code: RejectionCode; readonly retryAfterSec?: number } | { readonly drop: true };

interface Challenge {
  readonly deviceId: string;
  readonly clientId: string;
  readonly secret: Buffer;
  readonly nonce: Buffer;
  readonly ak: TpmPublic;
  readonly key: TpmPublic;
  readonly csr: Buffer;
}

export class ScriptedBridge {
  readonly received: Received[] = [];
  readonly issued: { deviceId: string; serial: string; certificate: string }[] = [];
  readonly trustBundle: string[];
  readonly #chain: string[];
  readonly #issuer: CertificateIssuer;
  readonly #backend: CaBackend;
  readonly #transport: MemoryTransport;
  readonly #topics: Topics;
  readonly #clock: Clock;
  readonly #script: Record<ScriptedKind, Scripted[]> = { enroll: [], enrollProof: [] };
  readonly #challenges = new Map<string, Challenge>();
  /** challengeId → device id, kept after the challenge is answered (to attribute a resent proof). */
  readonly #challengeDevice = new Map<string, string>();
  /** requestId → the first answer (challenges for enroll, certificates for proofs). */
  readonly #answers = new Map<string, { topic: string; payload: Buffer }>();

  private constructor(o: { trustBundle: string[]; chain: string[]; issuer: CertificateIssuer; backend: CaBackend; transport: MemoryTransport; topics: Topics; clock: Clock }) {
    this.trustBundle = o.trustBundle;
    this.#chain = o.chain;
    this.#issuer = o.issuer;
    this.#backend = o.backend;
    this.#transport = o.transport;
    this.#topics = o.topics;
    this.#clock = o.clock;
  }

  static async start(opts: { broker: MemoryBroker; dir: string; clock: Clock; baseTopic?: string }): Promise<ScriptedBridge> {
    const trustDomain = 'agent-test.fleet';
    const ca = await createCa({
      outDir: opts.dir,
      clock: opts.clock,
      trustDomain,
      root: { commonName: 'Agent Test Root' },
      issuing: { commonName: 'Agent Test Issuing CA' },
      backend: { kind: 'file', keyPath: join(opts.dir, 'issuing-key.pem') },
    });
    const issuer = new CertificateIssuer({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock: opts.clock, trustDomain });
    const transport = new MemoryTransport(opts.broker, { clientId: 'scripted-bridge', reconnectPeriodMs: 0 });
    const topics = new Topics(opts.baseTopic);
    const bridge = new ScriptedBridge({
      trustBundle: [ca.rootCertificatePem],
      chain: [ca.issuingCertificatePem],
      issuer,
      backend: ca.backend,
      transport,
      topics,
      clock: opts.clock,
    });
    await transport.connect();
    await transport.subscribe(topics.allEnrollments('enroll'), (m) => bridge.#handle('enroll', m));
    await transport.subscribe(topics.allEnrollments('enrollProof'), (m) => bridge.#handle('enrollProof', m));
    return bridge;
  }

  /** The next `kind` message is answered with this rejection (not remembered for its requestId). */
  rejectNext(kind: ScriptedKind, code: RejectionCode, opts?: { retryAfterSec?: number }): void {
    this.#script[kind].push({ code, ...(opts?.retryAfterSec === undefined ? {} : { retryAfterSec: opts.retryAfterSec }) });
  }

  /** The next `kind` message gets no answer at all (lost, or the bridge was down). */
  dropNext(kind: ScriptedKind): void {
    this.#script[kind].push({ drop: true });
  }

  sent(kind: ScriptedKind, deviceId?: string): Received[] {
    return this.received.filter((r) => r.kind === kind && (deviceId === undefined || r.deviceId === deviceId));
  }

  async stop(): Promise<void> {
    await this.#transport.close();
    await this.#backend.close();
  }

  async #handle(kind: ScriptedKind, m: IncomingMessage): Promise<void> {
    // Addressed by the attempt's client id, like the real bridge; the device id is in the payload.
    const parsed = this.#topics.parseEnrollment(m.topic);
    if (!parsed) return;
    const { clientId } = parsed;
    const json = JSON.parse(m.payload.toString()) as { requestId: string; body?: { deviceId?: string } };
    const requestId = json.requestId;
    const deviceId = kind === 'enroll' ? String(json.body?.deviceId) : (this.#challengeDevice.get(String((json.body as { challengeId?: string } | undefined)?.challengeId)) ?? '?');
    this.received.push({ kind, deviceId, clientId, requestId, payload: m.payload });
    const rejected = this.#topics.enrollment(clientId, 'enrollRejected');
    const reply = (topic: string, payload: Buffer) => this.#transport.publish(topic, payload);

    const scripted = this.#script[kind].shift();
    if (scripted && 'drop' in scripted) return;
    if (scripted) {
      const opts = scripted.retryAfterSec === undefined ? undefined : { retryAfterSec: scripted.retryAfterSec };
      return reply(rejected, encodeRejection(requestId, this.#clock.now(), scripted.code, opts));
    }
    const cached = this.#answers.get(`${clientId}/${kind}/${requestId}`);
    if (cached) return reply(cached.topic, cached.payload);
    try {
      const answer = kind === 'enroll' ? this.#enroll(clientId, m.payload) : await this.#proof(clientId, m.payload);
      this.#answers.set(`${clientId}/${kind}/${requestId}`, answer);
      await reply(answer.topic, answer.payload);
    } catch (e) {
      const code = (e as { rejection?: RejectionCode }).rejection ?? 'BAD_REQUEST';
      await reply(rejected, encodeRejection(requestId, this.#clock.now(), code, { message: (e as Error).message.slice(0, 500) }));
    }
  }

  #enroll(clientId: string, payload: Buffer): { topic: string; payload: Buffer } {
    const msg = decode('enroll', payload);
    const body: EnrollRequest = msg.body;
    const { deviceId } = body;
    const ek = parsePublic2b(body.ekPublic);
    if (!body.ekCertificate) refuse('EK_UNTRUSTED', 'no EK certificate');
    const certKey = new X509Certificate(body.ekCertificate!).publicKey.export({ type: 'spki', format: 'der' });
    if (!certKey.equals(publicToSpki(ek))) refuse('EK_MISMATCH', 'EK certificate does not match the EK public area');
    const ak = parsePublic2b(body.akPublic);
    const key = parsePublic2b(body.keyPublic);
    const secret = randomBytes(32);
    const nonce = randomBytes(32);
    const { credentialBlob, encryptedSecret } = makeCredential({ ekPublic: ek, objectName: objectName(ak), credential: secret });
    const challengeId = randomBytes(18).toString('base64url');
    this.#challenges.set(challengeId, { deviceId, clientId, secret, nonce, ak, key, csr: body.csr });
    this.#challengeDevice.set(challengeId, deviceId);
    return {
      topic: this.#topics.enrollment(clientId, 'enrollChallenge'),
      payload: encode('enrollChallenge', msg.requestId, this.#clock.now(), {
        challengeId,
        credentialBlob,
        encryptedSecret,
        nonce,
        expiresAt: this.#clock.now() + 120_000,
      }),
    };
  }

  async #proof(clientId: string, payload: Buffer): Promise<{ topic: string; payload: Buffer }> {
    const msg = decode('enrollProof', payload);
    const body = msg.body;
    const c = this.#challenges.get(body.challengeId);
    if (!c || c.clientId !== clientId) return refuse('CHALLENGE_UNKNOWN', 'no such challenge');
    const { deviceId } = c;
    this.#challenges.delete(body.challengeId);
    if (body.secret.length !== c.secret.length || !timingSafeEqual(body.secret, c.secret)) refuse('ACTIVATION_FAILED', 'wrong secret');
    const attest = parseAttest(body.certifyInfo);
    if (attest.type !== 'certify' || !attest.extraData.equals(c.nonce) || !attest.certified.name.equals(objectName(c.key))) {
      refuse('CERTIFY_INVALID', 'certification does not cover this key and nonce');
    }
    if (!verifyTpmSignature(c.ak, body.certifyInfo, body.certifySignature)) refuse('CERTIFY_INVALID', 'certification not signed by the AK');
    const csr = parseAndVerifyCsr(c.csr);
    if (csr.commonName !== deviceId) refuse('CSR_INVALID', 'CSR subject is not the device');
    if (!csr.publicKeySpki.equals(publicToSpki(c.key))) refuse('CSR_KEY_MISMATCH', 'CSR key is not the certified key');
    const issued = await this.#issuer.issue({
      deviceId,
      publicKeySpki: csr.publicKeySpki,
      lifetimeSec: 30 * 86_400,
      backdateSec: 300,
      trustDomain: this.#issuer.trustDomain,
    });
    const certificate = toPem(issued.certificateDer, 'CERTIFICATE');
    this.issued.push({ deviceId, serial: issued.serialNumber, certificate });
    return {
      topic: this.#topics.enrollment(clientId, 'enrollAccepted'),
      payload: encode('enrollAccepted', msg.requestId, this.#clock.now(), {
        deviceId,
        certificate,
        chain: this.#chain,
        trustBundle: this.trustBundle,
        serial: issued.serialNumber,
        notAfter: issued.notAfter.getTime(),
      }),
    };
  }
}

function refuse(code: RejectionCode, message: string): never {
  throw Object.assign(new Error(message), { rejection: code });
}
