/**
 * `npm run demo`: the main job, step by step. Today: a TPM is manufactured (swtpm with EK certificates
 * from a throwaway manufacturer CA), its EK certificate is verified, an identity key is created inside
 * it, a throwaway fleet CA certifies that key, and the device connects to mosquitto over mutual TLS
 * with the handshake signed inside the TPM. Everything runs on loopback and is removed at the end.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, X509Certificate } from 'node:crypto';
import mqtt from 'mqtt';
import { systemClock } from '../../common/clock.js';
import { Topics } from '../../common/protocol/topics.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import { verifyEkCertificate } from '../../native/lib/ek-certificate.js';
import { attributesOf } from '../../native/lib/wire/public.js';
import { createCa } from '../../broker-bridge/src/ca/ca-setup.js';
import { CertificateIssuer } from '../../broker-bridge/src/ca/issuer.js';
import { toPem } from '../../common/der.js';
import { issueServiceCertificate } from '../../broker-bridge/src/broker/service-cert.js';
import { EmbeddedBroker } from '../../broker-bridge/src/broker/embedded-broker.js';
import { createManufacturer, manufactureTpm, SwtpmProcess } from './swtpm.js';

const TRUST_DOMAIN = 'demo.fleet.example';
const DEVICE_ID = 'demo-device-1';

let stepNo = 0;
const step = (text: string) => console.log(`\n[${++stepNo}] ${text}`);
const info = (text: string) => console.log(`    ${text}`);

async function main(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'tpm-fleet-demo-'));
  const cleanup: (() => Promise<void>)[] = [];
  try {
    step('Manufacturing a TPM: swtpm_setup writes RSA and ECC EK certificates signed by a throwaway manufacturer CA');
    const manufacturer = createManufacturer(join(work, 'manufacturer'));
    const t0 = Date.now();
    await manufactureTpm(join(work, 'tpm'), manufacturer);
    const swtpm = await SwtpmProcess.start(join(work, 'tpm'));
    cleanup.push(() => swtpm.stop());
    info(`manufactured in ${Date.now() - t0} ms; serving on ${swtpm.tcti} (pid ${swtpm.pid})`);

    step('Opening the TPM through tpm2-tss ESAPI (native addon)');
    const tpm = await NativeTpm.open(swtpm.tcti);
    cleanup.push(() => tpm.close());
    const caps = await tpm.capabilities();
    info(`manufacturer ${caps.manufacturer} "${caps.vendorString}", firmware ${caps.firmwareVersion}, spec revision ${caps.specRevision / 100}`);

    step('Reading the EK certificate from NV and verifying it against the manufacturer root');
    const ekCert = await tpm.readEkCertificate('ecc');
    if (!ekCert) throw new Error('the TPM has no ECC EK certificate');
    const verified = verifyEkCertificate(ekCert, { roots: [manufacturer.rootPem()], intermediates: [manufacturer.intermediatePem()] }, Date.now());
    info(`EK certificate: issuer "${verified.certificate.issuer.replace(/\n/g, ', ')}", chain of ${verified.chain.length} up to "${verified.root}"`);
    const ek = await tpm.createEk('ecc');
    const ekMatches = ek.spki.equals(verified.ekSpki);
    info(`EK re-derived in the TPM: ${ek.public.type === 'ecc' ? `ECC curve 0x${ek.public.curveId.toString(16)}` : 'RSA'}; matches the certificate: ${ekMatches}`);
    await tpm.flush(ek);
    if (!ekMatches) throw new Error('EK does not match its certificate');

    step('Creating the identity key inside the TPM (under the SRK)');
    const srk = await tpm.ensureSrk();
    const { key } = await tpm.createIdentityKey(srk);
    const attrs = attributesOf(key.public);
    info(`TPM Name ${key.name.toString('hex').slice(0, 24)}…`);
    info(`attributes: ${Object.entries(attrs).filter(([, v]) => v).map(([k]) => k).join(', ')}`);
    info('the private key exists only inside the TPM (fixedTPM, fixedParent, sensitiveDataOrigin)');

    step('A throwaway fleet CA certifies the identity key');
    const ca = await createCa({
      outDir: join(work, 'ca'),
      clock: systemClock,
      trustDomain: TRUST_DOMAIN,
      root: { commonName: 'Demo Fleet Root' },
      issuing: { commonName: 'Demo Fleet Issuing CA' },
      backend: { kind: 'file', keyPath: join(work, 'ca', 'issuing-key.pem') },
      keepRootKey: true,
    });
    const issuer = new CertificateIssuer({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock: systemClock, trustDomain: TRUST_DOMAIN });
    const issued = await issuer.issue({ deviceId: DEVICE_ID, publicKeySpki: key.spki, lifetimeSec: 7 * 86_400, backdateSec: 60, trustDomain: TRUST_DOMAIN });
    const deviceCertPem = toPem(issued.certificateDer, 'CERTIFICATE');
    const leaf = new X509Certificate(deviceCertPem);
    info(`certificate serial ${issued.serialNumber}, ${issued.spiffeId}, valid until ${issued.notAfter.toISOString()}`);
    info(`certified key = TPM key: ${createHash('sha256').update(leaf.publicKey.export({ type: 'spki', format: 'der' })).digest('hex') === createHash('sha256').update(key.spki).digest('hex')}`);

    step('Starting mosquitto with generated config: mTLS device listener, per-device ACLs');
    const server = await issueServiceCertificate({
      rootCertPem: ca.rootCertificatePem,
      rootKeyPem: (await import('node:fs')).readFileSync(ca.files.rootKey!, 'utf8'),
      commonName: 'fleet-broker',
      usage: 'server',
      hosts: ['127.0.0.1', 'localhost'],
      clock: systemClock,
    });
    const broker = await EmbeddedBroker.start({
      dir: join(work, 'broker'),
      baseTopic: 'fleet/v1',
      serverCertPem: server.certPem,
      serverKeyPem: server.keyPem,
      clientCaPem: ca.chainPem,
    });
    cleanup.push(() => broker.stop());
    info(`mosquitto pid ${broker.pid}: enrollment ${broker.enrollUrl}, devices ${broker.deviceUrl}`);

    step('Connecting over mutual TLS; OpenSSL asks the TPM (TPM2_Sign) to sign the handshake');
    const tls = tpm.tlsKey(key);
    const client = await mqtt.connectAsync(broker.deviceUrl, {
      ca: ca.rootCertificatePem,
      cert: `${deviceCertPem}${ca.issuingCertificatePem}`,
      ...tls,
      clientId: DEVICE_ID,
      protocolVersion: 5,
      reconnectPeriod: 0,
      connectTimeout: 10_000,
    } as mqtt.IClientOptions);
    const socket = (client.stream as unknown as { getProtocol?: () => string; getCipher?: () => { name: string } }) ?? {};
    info(`connected: ${socket.getProtocol?.() ?? 'TLS'} ${socket.getCipher?.().name ?? ''}, broker authenticated us as ${DEVICE_ID}`);
    const topics = new Topics('fleet/v1');
    const status = JSON.stringify({ deviceId: DEVICE_ID, online: true, state: 'enrolled', certSerial: issued.serialNumber });
    const ack = await client.publishAsync(topics.device(DEVICE_ID, 'status'), status, { qos: 1, retain: true });
    info(`QoS1 PUBLISH of our retained status acknowledged (PUBACK reason ${(ack as { reasonCode?: number } | undefined)?.reasonCode ?? 0})`);
    const denied = await client.publishAsync(topics.device('someone-else', 'status'), status, { qos: 1 }).then(
      (a) => (a as { reasonCode?: number } | undefined)?.reasonCode ?? 0,
      (e: { code?: number }) => e.code ?? -1,
    );
    info(`PUBLISH to another device's topic: reason 0x${denied.toString(16)} (0x87 = not authorized by the broker ACL)`);
    await client.endAsync();
    tpm.releaseTlsKey(tls);
    await tpm.flush(key);
    await tpm.flush(srk);

    console.log('\n  device          | serial                           | expires                  | key in TPM');
    console.log(`  ${DEVICE_ID.padEnd(15)} | ${issued.serialNumber} | ${issued.notAfter.toISOString()} | yes (fixedTPM)`);
    console.log('\nDemo complete.');
  } finally {
    for (const fn of cleanup.reverse()) await fn().catch(() => undefined);
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  const err = e as { code?: string; message?: string };
  console.error(`\ndemo failed: ${err.code ? `[${err.code}] ` : ''}${err.message ?? String(e)}`);
  process.exit(1);
});
