import { describe, expect, it } from 'vitest';
import { createDecipheriv, createHash, createHmac } from 'node:crypto';
import { ALG } from './constants.js';
import { TpmWireError } from './errors.js';
import { kdfa, kdfe } from './kdf.js';

const hex = (s: string) => Buffer.from(s, 'hex');
const EMPTY = Buffer.alloc(0);
const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
};

const code = (fn: () => unknown) => {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(TpmWireError);
    return (e as TpmWireError).code;
  }
  return 'no error';
};

/**
 * Known answers from tpm2-tools 5.4 (`tpm2_makecredential -T none`, i.e. tpm2-tss's KDFs), credential
 * "credential-secret-0123456789abcd" for Name 000b ‖ "ak-name-for-kat-0123456789abcdef". The seed (RSA)
 * and Z (ECC) were recovered with the EK private keys the fixtures were made for.
 */
const KAT = {
  name: Buffer.concat([hex('000b'), Buffer.from('ak-name-for-kat-0123456789abcdef')]),
  credential: Buffer.from('credential-secret-0123456789abcd'),
  rsa2048Sha256: {
    seed: hex('df4fe69bd68b11ac2c10fd242549985b7aaf18998ebc7d44a4173bdeaed2ba4b'),
    idObject: hex(
      '004400200fee287542f828e98605b1f21c5ae3db376fa195ce895b1668d13c736cd72824aadb1ee5ed3ad7629413fe5ec63c6fbde88603f2f454d3dfea13414424560f591a5f',
    ),
  },
  p384Sha384: {
    z: hex('c991808d6b524d4ff984fcc167b40d92dac80612d7cb884bcc63da7e67885563310caac4d9e41cfdbfcecca80b34deba'),
    ephemeralX: hex('a2bd78183bcfbe887210067610da880abde65290fdbf9aca79fe3e89056cd04f8a6ae33abb12a0f343895743874e7a48'),
    ekX: hex('b636e3ed8d8ce673fc7cac258366edab3851b2ec3134dc20626dbaffc4c04b11bd1155af979b2529d028a5c649de1430'),
    idObject: hex(
      '0054003006019c1fa5cc584781caceeec5d74413a75c4a8fb15365c405ce589518686baa774af5a5fcdcf44d39578aac923c8e1effd7c2a0e016b4499479fbcd105e868fa53c2ab3ecff0d2eb955e3ce37ae31c222f1',
    ),
  },
};

/** Opens a TPM2B_ID_OBJECT with keys derived by our KDFa, as TPM2_ActivateCredential does (Part 1 §24). */
function openIdObject(nameAlg: number, hash: string, aesBits: number, seed: Buffer, name: Buffer, idObject: Buffer): Buffer {
  expect(idObject.readUInt16BE(0)).toBe(idObject.length - 2);
  const hmacSize = idObject.readUInt16BE(2);
  const outerHmac = idObject.subarray(4, 4 + hmacSize);
  const encIdentity = idObject.subarray(4 + hmacSize);
  const hmacKey = kdfa(nameAlg, seed, 'INTEGRITY', EMPTY, EMPTY, hmacSize * 8);
  expect(createHmac(hash, hmacKey).update(encIdentity).update(name).digest().toString('hex')).toBe(outerHmac.toString('hex'));
  const symKey = kdfa(nameAlg, seed, 'STORAGE', name, EMPTY, aesBits);
  const d = createDecipheriv(`aes-${aesBits}-cfb`, symKey, Buffer.alloc(16));
  const plain = Buffer.concat([d.update(encIdentity), d.final()]);
  expect(plain.readUInt16BE(0)).toBe(plain.length - 2);
  return plain.subarray(2);
}

describe('KDFa (Part 1 §11.4.10.2)', () => {
  it('derives the keys tpm2-tss derived for an RSA/SHA-256/AES-128 credential', () => {
    const { seed, idObject } = KAT.rsa2048Sha256;
    expect(openIdObject(ALG.SHA256, 'sha256', 128, seed, KAT.name, idObject).equals(KAT.credential)).toBe(true);
  });

  it('is HMAC([i]32 ‖ label ‖ 00 ‖ contextU ‖ contextV ‖ [bits]32), blocks concatenated', () => {
    const key = Buffer.alloc(32, 0x11);
    const u = Buffer.from('context-u');
    const v = Buffer.from('context-v');
    const block = (i: number, bits: number) =>
      createHmac('sha256', key).update(Buffer.concat([u32(i), Buffer.from('STORAGE\0'), u, v, u32(bits)])).digest();
    expect(kdfa(ALG.SHA256, key, 'STORAGE', u, v, 128).equals(block(1, 128).subarray(0, 16))).toBe(true);
    expect(kdfa(ALG.SHA256, key, 'STORAGE', u, v, 256).equals(block(1, 256))).toBe(true);
    expect(kdfa(ALG.SHA256, key, 'STORAGE', u, v, 384).equals(Buffer.concat([block(1, 384), block(2, 384)]).subarray(0, 48))).toBe(true);
  });

  it('produces the requested length, masks a partial first octet, and depends on every input', () => {
    const k = Buffer.alloc(48, 7);
    for (const [alg, bits, len] of [[ALG.SHA1, 160, 20], [ALG.SHA256, 8, 1], [ALG.SHA256, 520, 65], [ALG.SHA384, 256, 32], [ALG.SHA512, 1024, 128]] as const) {
      expect(kdfa(alg, k, 'X', EMPTY, EMPTY, bits)).toHaveLength(len);
    }
    for (let i = 0; i < 16; i++) expect(kdfa(ALG.SHA256, Buffer.from([i]), 'P', EMPTY, EMPTY, 12)[0]! & 0xf0).toBe(0);
    const base = kdfa(ALG.SHA256, k, 'L', Buffer.from('u'), Buffer.from('v'), 256);
    const variants = [
      kdfa(ALG.SHA256, Buffer.alloc(48, 8), 'L', Buffer.from('u'), Buffer.from('v'), 256),
      kdfa(ALG.SHA256, k, 'M', Buffer.from('u'), Buffer.from('v'), 256),
      kdfa(ALG.SHA256, k, 'L', Buffer.from('x'), Buffer.from('v'), 256),
      kdfa(ALG.SHA256, k, 'L', Buffer.from('u'), Buffer.from('x'), 256),
      kdfa(ALG.SHA384, k, 'L', Buffer.from('u'), Buffer.from('v'), 256),
      // [bits]32 is hashed, so a shorter request is not a prefix of a longer one.
      kdfa(ALG.SHA256, k, 'L', Buffer.from('u'), Buffer.from('v'), 264).subarray(0, 32),
    ];
    for (const v of variants) expect(v.equals(base)).toBe(false);
    expect(kdfa(ALG.SHA256, k, 'L', Buffer.from('u'), Buffer.from('v'), 256).equals(base)).toBe(true);
    expect(kdfa(ALG.SHA256, k, 'L\0', Buffer.from('u'), Buffer.from('v'), 256).equals(base)).toBe(true);
  });

  it('refuses unknown hashes and nonsensical lengths with codes', () => {
    expect(code(() => kdfa(0x0012, Buffer.alloc(32), 'X', EMPTY, EMPTY, 128))).toBe('TPM_WIRE_UNSUPPORTED');
    for (const bits of [0, -8, 12.5, Number.NaN, 0x10001]) expect(code(() => kdfa(ALG.SHA256, Buffer.alloc(32), 'X', EMPTY, EMPTY, bits))).toBe('TPM_WIRE_INVALID');
  });
});

describe('KDFe (Part 1 §11.4.10.3)', () => {
  it('derives the seed tpm2-tss derived for an ECC P-384/SHA-384/AES-256 credential', () => {
    const { z, ephemeralX, ekX, idObject } = KAT.p384Sha384;
    const seed = kdfe(ALG.SHA384, z, 'IDENTITY', ephemeralX, ekX, 384);
    expect(openIdObject(ALG.SHA384, 'sha384', 256, seed, KAT.name, idObject).equals(KAT.credential)).toBe(true);
    // partyU and partyV are not interchangeable.
    const swapped = kdfe(ALG.SHA384, z, 'IDENTITY', ekX, ephemeralX, 384);
    expect(() => openIdObject(ALG.SHA384, 'sha384', 256, swapped, KAT.name, idObject)).toThrow();
  });

  it('is H([i]32 ‖ Z ‖ label ‖ 00 ‖ partyU ‖ partyV), blocks concatenated', () => {
    const z = Buffer.alloc(32, 0x22);
    const u = Buffer.from('party-u');
    const v = Buffer.from('party-v');
    const block = (i: number) => createHash('sha256').update(Buffer.concat([u32(i), z, Buffer.from('IDENTITY\0'), u, v])).digest();
    expect(kdfe(ALG.SHA256, z, 'IDENTITY', u, v, 256).equals(block(1))).toBe(true);
    expect(kdfe(ALG.SHA256, z, 'IDENTITY', u, v, 320).equals(Buffer.concat([block(1), block(2)]).subarray(0, 40))).toBe(true);
    // bits is not hashed: a shorter output is the masked prefix of a longer one.
    const masked = Buffer.from(block(1).subarray(0, 2));
    masked[0]! &= 0x0f;
    expect(kdfe(ALG.SHA256, z, 'IDENTITY', u, v, 12).equals(masked)).toBe(true);
  });

  it('depends on every input and refuses bad parameters with codes', () => {
    const z = Buffer.alloc(32, 7);
    const base = kdfe(ALG.SHA256, z, 'IDENTITY', Buffer.from('a'), Buffer.from('b'), 256);
    expect(base).toHaveLength(32);
    expect(kdfe(ALG.SHA256, z, 'IDENTITY', Buffer.from('a'), Buffer.from('b'), 256).equals(base)).toBe(true);
    for (const v of [
      kdfe(ALG.SHA256, Buffer.alloc(32, 8), 'IDENTITY', Buffer.from('a'), Buffer.from('b'), 256),
      kdfe(ALG.SHA256, z, 'SECRET', Buffer.from('a'), Buffer.from('b'), 256),
      kdfe(ALG.SHA256, z, 'IDENTITY', Buffer.from('c'), Buffer.from('b'), 256),
      kdfe(ALG.SHA256, z, 'IDENTITY', Buffer.from('a'), Buffer.from('c'), 256),
      kdfe(ALG.SHA384, z, 'IDENTITY', Buffer.from('a'), Buffer.from('b'), 256),
    ]) {
      expect(v.equals(base)).toBe(false);
    }
    expect(code(() => kdfe(0x0012, z, 'IDENTITY', EMPTY, EMPTY, 256))).toBe('TPM_WIRE_UNSUPPORTED');
    expect(code(() => kdfe(ALG.SHA256, z, 'IDENTITY', EMPTY, EMPTY, 0))).toBe('TPM_WIRE_INVALID');
  });
});
