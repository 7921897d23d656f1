import { X509Certificate } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createTestCa } from '../test/harness/pki.js';
import { publicKeyOf, spkiOf, x509CacheSize, x509FromPem } from './x509-cache.js';

describe('x509FromPem', () => {
  it('parses a PEM once: the same object for the same text, with the key and SPKI of a fresh parse', async () => {
    const ca = await createTestCa('cache-root');
    const a = x509FromPem(ca.certPem);
    expect(x509FromPem(ca.certPem)).toBe(a);
    const fresh = new X509Certificate(ca.certPem);
    expect(a.raw.equals(fresh.raw)).toBe(true);
    expect(publicKeyOf(a)).toBe(publicKeyOf(a));
    expect(publicKeyOf(a).equals(fresh.publicKey)).toBe(true);
    expect(spkiOf(a).equals(fresh.publicKey.export({ type: 'spki', format: 'der' }))).toBe(true);
  });

  it('throws for text that is not a certificate, and does not keep it', () => {
    const before = x509CacheSize();
    expect(() => x509FromPem('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n')).toThrow();
    expect(() => x509FromPem('hello')).toThrow();
    expect(x509CacheSize()).toBe(before);
  });

  it('stays bounded: certificates from the network cannot grow it past 64, the oldest go first', async () => {
    const ca = await createTestCa('cache-issuer');
    const first = (await ca.issue({ cn: 'peer-0' })).certPem;
    const firstParsed = x509FromPem(first);
    for (let i = 1; i <= 70; i++) x509FromPem((await ca.issue({ cn: `peer-${i}` })).certPem);
    expect(x509CacheSize()).toBe(64);
    // The first one was evicted: parsing it again gives a new (equal) object.
    const again = x509FromPem(first);
    expect(again).not.toBe(firstParsed);
    expect(again.raw.equals(firstParsed.raw)).toBe(true);
  });
});
