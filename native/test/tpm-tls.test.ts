import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPublicKey } from 'node:crypto';
import mqtt from 'mqtt';
import { startBroker, startTpm, type TestBroker, type TestTpm } from '../../test/harness/index.js';
import { NativeTpm } from '../lib/native-tpm.js';
import type { Tpm, TpmKey } from '../lib/tpm.js';

/**
 * mqtt.js over mutual TLS with the client key inside swtpm: the OpenSSL ENGINE registered by the addon
 * signs the handshake's CertificateVerify with TPM2_Sign, so the private key never exists in Node.
 */
describe('TLS client authentication with a TPM-held key', () => {
  let sw: TestTpm;
  let broker: TestBroker;
  let tpm: Tpm;
  let key: TpmKey;
  let certPem: string;

  beforeAll(async () => {
    [sw, broker] = await Promise.all([startTpm(), startBroker()]);
    tpm = await NativeTpm.open(sw.tcti);
    const srk = await tpm.ensureSrk();
    key = (await tpm.createIdentityKey(srk)).key;
    const spkiKey = createPublicKey({ key: key.spki, format: 'der', type: 'spki' });
    certPem = (await broker.clientCa.issue({ cn: 'device-tls-1', clientAuth: true, publicKey: spkiKey })).certPem;
  });
  afterAll(async () => {
    await tpm?.close();
    await Promise.all([sw?.stop(), broker?.stop()]);
  });

  const connect = (tls: { privateKeyEngine: string; privateKeyIdentifier: string }) =>
    mqtt.connectAsync(`mqtts://127.0.0.1:${broker.tlsPort}`, {
      ca: broker.caPem,
      cert: certPem,
      ...tls,
      protocolVersion: 5,
      clientId: 'device-tls-1',
      reconnectPeriod: 0,
      connectTimeout: 10_000,
    } as mqtt.IClientOptions);

  it('completes CONNECT and a QoS1 PUBLISH through mosquitto with require_certificate', async () => {
    const tls = tpm.tlsKey(key);
    const client = await connect(tls);
    try {
      const received = new Promise<string>((resolve) => client.on('message', (_t, p) => resolve(p.toString())));
      await client.subscribeAsync('tls/echo', { qos: 1 });
      // For QoS1, publishAsync resolves only once the broker's PUBACK arrived.
      await client.publishAsync('tls/echo', 'signed in the TPM', { qos: 1 });
      expect(await received).toBe('signed in the TPM');
    } finally {
      await client.endAsync();
      tpm.releaseTlsKey(tls);
    }
  });

  it('is refused by the broker when the certificate is presented without its key', async () => {
    // Same certificate and public key, but CertificateVerify signed by a different TPM key: exactly
    // what an attacker holding only the certificate could do.
    const srk = await tpm.ensureSrk();
    const other = (await tpm.createIdentityKey(srk)).key;
    const forged = tpm.tlsKey({ ...other, publicArea: key.publicArea });
    try {
      const err = await connect(forged).then(
        () => undefined,
        (e: Error) => e,
      );
      // Alert 51 (decrypt_error) comes from the broker: it checked CertificateVerify against the
      // certificate's key and refused. A local failure would carry no TLS alert.
      expect(err?.message).toMatch(/alert decrypt error|alert number 51/);
    } finally {
      tpm.releaseTlsKey(forged);
      await tpm.flush(other);
    }
  });
});
