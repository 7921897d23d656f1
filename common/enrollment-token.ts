import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

/**
 * One-time enrollment tokens: 256 random bits, base64url (43 characters). The fleet stores only
 * SHA-256(token): tokens carry full entropy, so a slow password hash would add nothing.
 */
export function mintEnrollmentToken(): { token: string; tokenHash: string } {
  const token = randomBytes(32).toString('base64url');
  return { token, tokenHash: hashEnrollmentToken(token) };
}

export function hashEnrollmentToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** Constant-time comparison of two hex hashes of equal length. */
export function tokenHashesEqual(a: string, b: string): boolean {
  const ba = Buffer.from(a, 'hex');
  const bb = Buffer.from(b, 'hex');
  return ba.length === bb.length && ba.length > 0 && timingSafeEqual(ba, bb);
}
