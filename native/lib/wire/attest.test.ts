import { describe, expect, it } from 'vitest';
import { parseAttest } from './attest.js';
import { TpmWriter } from './buffer-io.js';
import { ST_ATTEST, TPM_GENERATED_VALUE } from './constants.js';
import { marshalPcrSelection, quotePcrDigest } from './pcr.js';
import { objectName, parsePublic2b } from './public.js';
import { SWTPM } from './swtpm-fixtures.js';
import { codeOf } from './test-helpers.js';

/** TPMS_ATTEST header (Part 2 §10.12.12) up to and including firmwareVersion. */
function header(type: number, extraData: Buffer): TpmWriter {
  return new TpmWriter()
    .u32(TPM_GENERATED_VALUE)
    .u16(type)
    .tpm2b(Buffer.alloc(34, 0xaa)) // qualifiedSigner
    .tpm2b(extraData)
    .u64(0x0000012345678901n) // clock
    .u32(7) // resetCount
    .u32(3) // restartCount
    .u8(1) // safe
    .u64(0x2019102300163636n); // firmwareVersion
}

describe('parseAttest', () => {
  it('parses a certify structure', () => {
    const name = Buffer.alloc(34, 1);
    const qn = Buffer.alloc(34, 2);
    const a = parseAttest(header(ST_ATTEST.CERTIFY, Buffer.from('nonce')).tpm2b(name).tpm2b(qn).finish());
    expect(a).toEqual({
      magic: TPM_GENERATED_VALUE,
      type: 'certify',
      qualifiedSigner: Buffer.alloc(34, 0xaa),
      extraData: Buffer.from('nonce'),
      clockInfo: { clock: 0x0000012345678901n, resetCount: 7, restartCount: 3, safe: true },
      firmwareVersion: 0x2019102300163636n,
      certified: { name, qualifiedName: qn },
    });
  });

  it('parses a quote structure with its PCR selection', () => {
    const sel = marshalPcrSelection([{ hash: 'sha256', pcrs: [0, 7] }, { hash: 'sha1', pcrs: [23] }]);
    const digest = Buffer.alloc(32, 9);
    const a = parseAttest(header(ST_ATTEST.QUOTE, Buffer.alloc(0)).bytes(sel).tpm2b(digest).finish());
    expect(a.type).toBe('quote');
    if (a.type !== 'quote') return;
    expect(a.quoted.pcrSelect).toEqual([{ hash: 'sha256', pcrs: [0, 7] }, { hash: 'sha1', pcrs: [23] }]);
    expect(a.quoted.pcrDigest.equals(digest)).toBe(true);
    expect(a.extraData.length).toBe(0);
  });

  it('parses what a real TPM produced: tpm2_certify and tpm2_quote', () => {
    const c = parseAttest(SWTPM.certifyAttest);
    expect(c.magic).toBe(TPM_GENERATED_VALUE);
    expect(c.type).toBe('certify');
    if (c.type === 'certify') expect(c.certified.name.equals(objectName(parsePublic2b(SWTPM.idkPub2b)))).toBe(true);
    expect(c.extraData.toString('hex')).toBe('00ff55aa'); // tpm2_certify's fixed qualifying data
    // qualifiedSigner is the AK's qualified Name: same nameAlg, not its Name.
    expect(c.qualifiedSigner.readUInt16BE(0)).toBe(SWTPM.akName.readUInt16BE(0));
    expect(c.qualifiedSigner.equals(SWTPM.akName)).toBe(false);

    const q = parseAttest(SWTPM.quoteMsg);
    expect(q.type).toBe('quote');
    expect(q.extraData.toString('hex')).toBe('0102030405060708');
    expect(q.clockInfo.safe).toBe(true);
    if (q.type !== 'quote') return;
    expect(q.quoted.pcrSelect).toEqual([{ hash: 'sha256', pcrs: [0, 1, 7, 16] }]);
    const values = [0, 1, 2, 3].map((i) => SWTPM.quotePcrs.subarray(32 * i, 32 * i + 32));
    expect(q.quoted.pcrDigest.equals(quotePcrDigest('sha256', values))).toBe(true);
    expect(q.quoted.pcrDigest.equals(quotePcrDigest('sha256', [...values].reverse()))).toBe(false);
  });

  it('keeps the magic for the caller to check (a non-TPM-generated structure still parses)', () => {
    const w = new TpmWriter().u32(0x12345678).u16(ST_ATTEST.CERTIFY).tpm2b(Buffer.alloc(0)).tpm2b(Buffer.alloc(0));
    w.u64(0).u32(0).u32(0).u8(0).u64(0).tpm2b(Buffer.alloc(0)).tpm2b(Buffer.alloc(0));
    const a = parseAttest(w.finish());
    expect(a.magic).toBe(0x12345678);
    expect(a.clockInfo.safe).toBe(false);
  });

  it('refuses other attestation types with TPM_WIRE_UNSUPPORTED', () => {
    for (const type of [0x8014 /* NV */, 0x8015 /* COMMAND_AUDIT */, 0x8016 /* SESSION_AUDIT */, 0x801a /* CREATION */, 0x8019 /* TIME */, 0]) {
      const buf = header(type, Buffer.alloc(0)).tpm2b(Buffer.alloc(34)).tpm2b(Buffer.alloc(34)).finish();
      expect(codeOf(() => parseAttest(buf))).toBe('TPM_WIRE_UNSUPPORTED');
    }
  });

  it('refuses every truncation and trailing bytes with codes', () => {
    for (const full of [SWTPM.certifyAttest, SWTPM.quoteMsg]) {
      for (let n = 0; n < full.length; n++) expect(codeOf(() => parseAttest(full.subarray(0, n)))).toBe('TPM_WIRE_TRUNCATED');
      expect(codeOf(() => parseAttest(Buffer.concat([full, Buffer.from([0])])))).toBe('TPM_WIRE_INVALID');
    }
  });

  it('refuses garbage without crashing', () => {
    let seed = 1;
    const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff);
    for (let i = 0; i < 300; i++) {
      const b = Buffer.alloc(rnd() % 200);
      for (let j = 0; j < b.length; j++) b[j] = rnd() & 0xff;
      if (i % 2 && b.length >= 6) b.writeUInt16BE(ST_ATTEST.QUOTE, 4);
      const c = codeOf(() => parseAttest(b));
      expect(['TPM_WIRE_TRUNCATED', 'TPM_WIRE_INVALID', 'TPM_WIRE_UNSUPPORTED', 'no error']).toContain(c);
    }
  });
});
