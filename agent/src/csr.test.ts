import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAndVerifyCsr } from '../../broker-bridge/src/ca/csr.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import type { TpmKey } from '../../native/lib/tpm.js';
import { buildTpmCsr } from './csr.js';
import { countSignatures } from './signature-counter.js';
import { startSwtpm, type TestSwtpm } from './testing/swtpm.js';

describe('CSR signed inside the TPM (real swtpm)', () => {
  let swtpm: TestSwtpm;
  let tpm: NativeTpm;
  let key: TpmKey;
  let csr: Buffer;
  let signatures: () => number;

  beforeAll(async () => {
    swtpm = await startSwtpm();
    tpm = await NativeTpm.open(swtpm.tcti);
    const counted = countSignatures(tpm);
    signatures = counted.signatures;
    const srk = await counted.tpm.ensureSrk();
    key = (await counted.tpm.createIdentityKey(srk)).key;
    await counted.tpm.flush(srk);
    csr = await buildTpmCsr(counted.tpm, key, 'device-0042');
  });
  afterAll(async () => {
    if (key) await tpm.flush(key).catch(() => undefined);
    await tpm?.close();
    await swtpm?.stop();
  });

  it('verifies, names the device and carries the TPM key, for one TPM signature', () => {
    const v = parseAndVerifyCsr(csr);
    expect(v.commonName).toBe('device-0042');
    expect(v.publicKeySpki.equals(key.spki)).toBe(true);
    expect(v.signatureAlgorithm).toBe('ecdsa-with-SHA256');
    expect(signatures()).toBe(1);
  });

  it('breaks when any signed byte or the signature changes', () => {
    const cn = csr.indexOf(Buffer.from('device-0042'));
    const tamperedName = Buffer.from(csr);
    tamperedName[cn + 10] = 0x33; // device-0043
    expect(() => parseAndVerifyCsr(tamperedName)).toThrow(expect.objectContaining({ code: 'CA_BAD_CSR' }));

    const point = csr.indexOf(key.spki) + key.spki.length - 1;
    const tamperedKey = Buffer.from(csr);
    tamperedKey[point] = tamperedKey[point]! ^ 0x01;
    expect(() => parseAndVerifyCsr(tamperedKey)).toThrow(expect.objectContaining({ code: 'CA_BAD_CSR' }));

    const tamperedSig = Buffer.from(csr);
    tamperedSig[tamperedSig.length - 3] = tamperedSig[tamperedSig.length - 3]! ^ 0x01;
    expect(() => parseAndVerifyCsr(tamperedSig)).toThrow(expect.objectContaining({ code: 'CA_BAD_CSR' }));
  });
});
