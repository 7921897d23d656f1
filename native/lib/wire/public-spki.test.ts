import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ECC_CURVE } from './constants.js';
import { TpmWireError } from './errors.js';
import { curveInfo, eccSpki, publicToKeyObject, publicToSpki, type EccPublic } from './public.js';
import { ekEccTemplate } from './templates.js';

/**
 * eccSpki builds the SubjectPublicKeyInfo of a TPM ECC point without node:crypto (whose import runs a
 * full scalar-multiplication key check, ~0.3 ms on P-384). These tests hold it to node:crypto: the same
 * bytes for every valid point, a refusal wherever node refuses, and a refusal of the non-reduced
 * coordinates node would silently reduce.
 */
const CURVES = [
  { id: ECC_CURVE.NIST_P256, name: 'P-256' },
  { id: ECC_CURVE.NIST_P384, name: 'P-384' },
  { id: ECC_CURVE.NIST_P521, name: 'P-521' },
] as const;

const code = (fn: () => unknown): string | undefined => {
  try {
    fn();
    return undefined;
  } catch (e) {
    expect(e).toBeInstanceOf(TpmWireError);
    return (e as TpmWireError).code;
  }
};

const nodeImport = (crv: string, x: Buffer, y: Buffer) =>
  createPublicKey({ key: { kty: 'EC', crv, x: x.toString('base64url'), y: y.toString('base64url') }, format: 'jwk' });

function point(crv: string): { x: Buffer; y: Buffer; spki: Buffer } {
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: crv });
  const jwk = publicKey.export({ format: 'jwk' });
  return { x: Buffer.from(jwk.x!, 'base64url'), y: Buffer.from(jwk.y!, 'base64url'), spki: publicKey.export({ type: 'spki', format: 'der' }) };
}

describe('eccSpki and the public-area keys, against node:crypto', () => {
  for (const c of CURVES) {
    it(`${c.name}: the bytes node:crypto exports for valid points; refuses every point node refuses`, () => {
      for (let i = 0; i < 40; i++) {
        const p = point(c.name);
        expect(eccSpki(c.id, p.x, p.y).equals(p.spki)).toBe(true);
        // One flipped bit anywhere in y (or x) takes the point off the curve: both refuse.
        const y = Buffer.from(p.y);
        y[i % y.length]! ^= 1 << i % 8;
        expect(() => nodeImport(c.name, p.x, y)).toThrow();
        expect(code(() => eccSpki(c.id, p.x, y))).toBe('TPM_WIRE_INVALID');
        const x = Buffer.from(p.x);
        x[(i * 7) % x.length]! ^= 0x80 >> i % 8;
        expect(() => nodeImport(c.name, x, p.y)).toThrow();
        expect(code(() => eccSpki(c.id, x, p.y))).toBe('TPM_WIRE_INVALID');
      }
    });

    it(`${c.name}: publicToKeyObject and publicToSpki agree with node for a TPM public area`, () => {
      const p = point(c.name);
      const pub: EccPublic = { ...ekEccTemplate(), curveId: c.id, x: p.x, y: p.y };
      expect(publicToSpki(pub).equals(p.spki)).toBe(true);
      expect(publicToKeyObject(pub).equals(createPublicKey({ key: p.spki, format: 'der', type: 'spki' }))).toBe(true);
      expect(code(() => publicToKeyObject({ ...pub, y: Buffer.from(p.x) }))).toBe('TPM_WIRE_INVALID');
    });
  }

  it('refuses the point (0, 0), empty coordinates and coordinates longer than the curve', () => {
    for (const c of CURVES) {
      const size = curveInfo(c.id).size;
      expect(code(() => eccSpki(c.id, Buffer.alloc(size), Buffer.alloc(size)))).toBe('TPM_WIRE_INVALID');
      expect(code(() => eccSpki(c.id, Buffer.alloc(0), Buffer.alloc(0)))).toBe('TPM_WIRE_INVALID');
      const p = point(c.name);
      expect(code(() => eccSpki(c.id, Buffer.concat([Buffer.alloc(1), p.x]), p.y))).toBe('TPM_WIRE_INVALID');
    }
  });

  it('refuses a coordinate not reduced mod p (x + p on P-521 fits in 66 octets and names the same point)', () => {
    const p = point('P-521');
    const big = BigInt(`0x${p.x.toString('hex')}`) + ((1n << 521n) - 1n);
    const x = Buffer.from(big.toString(16).padStart(132, '0'), 'hex');
    expect(x.length).toBe(66);
    expect(code(() => eccSpki(ECC_CURVE.NIST_P521, x, p.y))).toBe('TPM_WIRE_INVALID');
    expect(eccSpki(ECC_CURVE.NIST_P521, p.x, p.y).equals(p.spki)).toBe(true);
  });

  it('left-pads short coordinates to the same key; refuses unknown curves as unsupported', () => {
    let p = point('P-384');
    while (p.x[0] !== 0) p = point('P-384');
    expect(eccSpki(ECC_CURVE.NIST_P384, p.x.subarray(1), p.y).equals(p.spki)).toBe(true);
    expect(code(() => eccSpki(0x0010 /* BN P-256 */, p.x, p.y))).toBe('TPM_WIRE_UNSUPPORTED');
  });
});
