import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { ECDH, createPublicKey, generateKeyPairSync, webcrypto } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAndVerifyCsr } from './csr.js';
import { seq, tlv, toPem } from '../../../common/der.js';
import { buildCsr, deviceKey, expectCode, openssl } from './test-util.js';

x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);

describe('parseAndVerifyCsr', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'csr-test-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads a CSR made by @peculiar/x509 (DER and PEM)', async () => {
    const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
    const keys = await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify']);
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: 'CN=dev-7, O=Fleet', keys, signingAlgorithm: alg });
    const spki = Buffer.from(await webcrypto.subtle.exportKey('spki', keys.publicKey));
    for (const input of [Buffer.from(csr.rawData), csr.toString('pem')]) {
      const r = parseAndVerifyCsr(input);
      expect(r.commonName).toBe('dev-7');
      expect(r.publicKeySpki.equals(spki)).toBe(true);
      expect(r.curve).toBe('P-256');
      expect(r.signatureAlgorithm).toBe('ecdsa-with-SHA256');
    }
  });

  it('reads a CSR made by openssl (P-384, SHA-384, NEW CERTIFICATE REQUEST header variant)', async () => {
    const keyPath = join(dir, 'k384.pem');
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'secp384r1' });
    await writeFile(keyPath, privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const res = await openssl(['req', '-new', '-key', keyPath, '-subj', '/CN=dev-384', '-sha384', '-out', join(dir, 'r.csr')]);
    expect(res.code, res.stderr).toBe(0);
    const pem = await readFile(join(dir, 'r.csr'), 'utf8');
    const r = parseAndVerifyCsr(pem);
    expect(r.commonName).toBe('dev-384');
    expect(r.curve).toBe('P-384');
    expect(r.signatureAlgorithm).toBe('ecdsa-with-SHA384');
    const legacy = pem.replace(/CERTIFICATE REQUEST/g, 'NEW CERTIFICATE REQUEST');
    expect(parseAndVerifyCsr(legacy).commonName).toBe('dev-384');
  });

  it('returns no commonName for an empty subject', () => {
    const k = deviceKey();
    expect(parseAndVerifyCsr(buildCsr({ ...k })).commonName).toBeUndefined();
  });

  it('rejects a CSR whose signature does not match its content', async () => {
    const k = deviceKey();
    // Signed over CN=dev-1, but carries CN=dev-2.
    const csr = buildCsr({
      ...k,
      commonNames: ['dev-1'],
      tamper: (cri) => Buffer.from(cri.toString('latin1').replace('dev-1', 'dev-2'), 'latin1'),
    });
    await expectCode(() => parseAndVerifyCsr(csr), 'CA_BAD_CSR');
    try {
      parseAndVerifyCsr(csr);
    } catch (e) {
      expect((e as { details?: { reason?: string } }).details?.reason).toBe('bad_signature');
    }
  });

  it('rejects a CSR signed by a different key', async () => {
    const k = deviceKey();
    const other = deviceKey();
    await expectCode(() => parseAndVerifyCsr(buildCsr({ privateKey: other.privateKey, spki: k.spki, commonNames: ['d'] })), 'CA_BAD_CSR');
  });

  it('enforces the size limit before parsing', async () => {
    const k = deviceKey();
    const csr = buildCsr({ ...k, commonNames: ['dev-1'] });
    await expectCode(() => parseAndVerifyCsr(Buffer.concat([csr, Buffer.alloc(5000)])), 'CA_BAD_CSR');
    await expectCode(() => parseAndVerifyCsr('A'.repeat(5000)), 'CA_BAD_CSR');
    await expectCode(() => parseAndVerifyCsr(csr, { maxBytes: csr.length - 1 }), 'CA_BAD_CSR');
    expect(parseAndVerifyCsr(csr, { maxBytes: csr.length }).commonName).toBe('dev-1');
    try {
      parseAndVerifyCsr(Buffer.alloc(5000, 0x30));
    } catch (e) {
      expect((e as { details?: { reason?: string } }).details?.reason).toBe('too_large');
    }
  });

  it('rejects malformed DER', async () => {
    const k = deviceKey();
    const good = buildCsr({ ...k, commonNames: ['dev-1'] });
    const cases: Buffer[] = [
      Buffer.alloc(0),
      Buffer.from('hello'),
      good.subarray(0, good.length - 1), // truncated
      Buffer.concat([good, Buffer.from([0])]), // trailing byte
      Buffer.concat([Buffer.from([0x30, 0x80]), good.subarray(2), Buffer.from([0, 0])]), // indefinite length
      seq(tlv(0x02, Buffer.from([1]))),
    ];
    for (const c of cases) await expectCode(() => parseAndVerifyCsr(c), 'CA_BAD_CSR');
    await expectCode(() => parseAndVerifyCsr(toPem(Buffer.from('junk'), 'CERTIFICATE REQUEST')), 'CA_BAD_CSR');
    await expectCode(() => parseAndVerifyCsr('-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n'), 'CA_BAD_CSR');
  });

  it('rejects RSA keys, compressed points and ambiguous subjects', async () => {
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const rsaSpki = rsa.publicKey.export({ type: 'spki', format: 'der' });
    await expectCode(() => parseAndVerifyCsr(buildCsr({ privateKey: rsa.privateKey, spki: rsaSpki })), 'CA_BAD_CSR');

    const k = deviceKey();
    const point = k.spki.subarray(k.spki.length - 65);
    const compressedPoint = ECDH.convertKey(point, 'prime256v1', undefined, undefined, 'compressed') as Buffer;
    const compressedSpki = Buffer.concat([Buffer.from('3039301306072a8648ce3d020106082a8648ce3d030107032200', 'hex'), compressedPoint]);
    expect(createPublicKey({ key: compressedSpki, format: 'der', type: 'spki' }).asymmetricKeyType).toBe('ec');
    await expectCode(() => parseAndVerifyCsr(buildCsr({ privateKey: k.privateKey, spki: compressedSpki })), 'CA_BAD_CSR');
    await expectCode(() => parseAndVerifyCsr(buildCsr({ ...k, commonNames: ['a', 'b'] })), 'CA_BAD_CSR');
  });
});
