import { X509Certificate, type KeyObject } from 'node:crypto';

/**
 * Parsed certificates shared by everything in a process, keyed by their PEM text. The same few CA
 * certificates (trust bundle, issuing chain) arrive with every CRL, trust bundle, enrollment answer and
 * reconnect, and `new X509Certificate` plus `publicKey` cost 0.3–0.5 ms each time: a device re-parsed
 * its roots on every fleet message, and a simulator worker hosting hundreds of agents parsed the same
 * CA once per agent and message (about 5 ms of CPU per enrolled device).
 *
 * An X509Certificate is immutable, so one parsed object can serve every caller. The map is bounded
 * (oldest entry out first) so that certificates from the network (peers to verify) cannot grow it.
 * Text that does not parse throws as `new X509Certificate` does and is not cached.
 */
const MAX_ENTRIES = 64;
const byPem = new Map<string, X509Certificate>();
const publicKeys = new WeakMap<X509Certificate, KeyObject>();
const spkis = new WeakMap<X509Certificate, Buffer>();

export function x509FromPem(pem: string): X509Certificate {
  const hit = byPem.get(pem);
  if (hit) return hit;
  const cert = new X509Certificate(pem);
  if (byPem.size >= MAX_ENTRIES) byPem.delete(byPem.keys().next().value as string);
  byPem.set(pem, cert);
  return cert;
}

/** `cert.publicKey`, made once per certificate object (the getter builds a new KeyObject each call). */
export function publicKeyOf(cert: X509Certificate): KeyObject {
  let k = publicKeys.get(cert);
  if (!k) publicKeys.set(cert, (k = cert.publicKey));
  return k;
}

/** The DER SubjectPublicKeyInfo of the certificate's key, as node:crypto exports it. Do not modify. */
export function spkiOf(cert: X509Certificate): Buffer {
  let s = spkis.get(cert);
  if (!s) spkis.set(cert, (s = publicKeyOf(cert).export({ type: 'spki', format: 'der' })));
  return s;
}

/** How many certificates the cache holds (for tests). */
export function x509CacheSize(): number {
  return byPem.size;
}
