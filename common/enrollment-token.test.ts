import { describe, expect, it } from 'vitest';
import { hashEnrollmentToken, mintEnrollmentToken, tokenHashesEqual } from './enrollment-token.js';

describe('enrollment tokens', () => {
  it('mints 256-bit base64url tokens whose stored form is their SHA-256', () => {
    const { token, tokenHash } = mintEnrollmentToken();
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(tokenHash).toBe(hashEnrollmentToken(token));
    expect(tokenHash).not.toContain(token);
    expect(mintEnrollmentToken().token).not.toBe(token);
    expect(tokenHashesEqual(tokenHash, hashEnrollmentToken(token))).toBe(true);
    expect(tokenHashesEqual(tokenHash, mintEnrollmentToken().tokenHash)).toBe(false);
    expect(tokenHashesEqual('', '')).toBe(false);
  });
});
