import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { expect } from 'vitest';
import { TpmWireError } from './errors.js';
import type { EccPublic, RsaPublic } from './public.js';

/** Runs `fn` and returns the code of the TpmWireError it throws ('no error' when it returns). */
export function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(TpmWireError);
    return (e as TpmWireError).code;
  }
  return 'no error';
}

const NODE_CURVE = { 'P-256': 'prime256v1', 'P-384': 'secp384r1', 'P-521': 'secp521r1' } as const;

/** `template` with the unique field holding a fresh node:crypto EC key, plus that key pair. */
export function eccKeyFor(template: EccPublic, crv: keyof typeof NODE_CURVE = 'P-256'): { pub: EccPublic; publicKey: KeyObject; privateKey: KeyObject } {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: NODE_CURVE[crv] });
  const jwk = publicKey.export({ format: 'jwk' });
  return { pub: { ...template, x: Buffer.from(jwk.x!, 'base64url'), y: Buffer.from(jwk.y!, 'base64url') }, publicKey, privateKey };
}

/** `template` with the unique field holding a fresh node:crypto RSA modulus, plus that key pair. */
export function rsaKeyFor(template: RsaPublic, publicExponent = 65537): { pub: RsaPublic; publicKey: KeyObject; privateKey: KeyObject } {
  const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: template.keyBits, publicExponent });
  const jwk = publicKey.export({ format: 'jwk' });
  return { pub: { ...template, exponent: publicExponent === 65537 ? 0 : publicExponent, modulus: Buffer.from(jwk.n!, 'base64url') }, publicKey, privateKey };
}
