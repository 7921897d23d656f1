import type { X509Certificate } from 'node:crypto';
import { publicKeyOf, spkiOf, x509FromPem } from '../../common/x509-cache.js';
import { normalizeSerial } from './crl-der.js';
import type { RevocationView } from './revocation-cache.js';

/**
 * Offline verification of peers (issue 7): whether a certificate is valid now, from the trust bundle,
 * the judged time and the cached CRL, as a code and a reason. Used by `Agent.verifyPeer` and the
 * `agent verify` CLI (peer-verify-snapshot.ts).
 */
export type PeerVerdictCode = 'OK' | 'CERT_EXPIRED' | 'CERT_NOT_YET_VALID' | 'CHAIN_UNTRUSTED' | 'REVOKED' | 'CRL_STALE' | 'CRL_MISSING';

export interface PeerVerdict {
  readonly valid: boolean;
  readonly code: PeerVerdictCode;
  readonly reason: string;
}

/**
 * Whether `certPem` is valid at `now` without the network. Order: chain to the trust bundle
 * (CHAIN_UNTRUSTED), validity of every certificate on the path against `now` (the agent's judged
 * time, clock floor applied), revocation of the leaf in the cached CRL, then the CRL's freshness.
 * A revoked serial is REVOKED even from a stale CRL (revocation is final); an unrevoked one from a
 * stale CRL is CRL_STALE. A CRL from another issuer than the leaf's does not cover it: CRL_MISSING.
 * Only the leaf is checked for revocation (the cache holds the issuing CA's CRL, not the root's).
 */
export function verifyPeer(
  certPem: string,
  opts: { readonly trustBundle: readonly string[]; readonly chain?: readonly string[]; readonly now: number; readonly cache: RevocationView },
): PeerVerdict {
  const verdict = (code: PeerVerdictCode, reason: string): PeerVerdict => ({ valid: code === 'OK', code, reason });
  let leaf: X509Certificate;
  let pool: X509Certificate[];
  let roots: X509Certificate[];
  try {
    leaf = x509FromPem(certPem);
  } catch {
    return verdict('CHAIN_UNTRUSTED', 'the certificate does not parse');
  }
  try {
    pool = (opts.chain ?? []).map(x509FromPem);
    roots = opts.trustBundle.map(x509FromPem);
  } catch {
    return verdict('CHAIN_UNTRUSTED', 'the chain or trust bundle does not parse');
  }

  const path: X509Certificate[] = [leaf];
  let cur = leaf;
  let anchored = false;
  for (let depth = 0; depth <= pool.length; depth++) {
    const root = roots.find((r) => r.ca && cur.checkIssued(r) && cur.verify(publicKeyOf(r)));
    if (root) {
      if (root !== cur) path.push(root);
      anchored = true;
      break;
    }
    const next = pool.find((c) => c.ca && !path.includes(c) && cur.checkIssued(c) && cur.verify(publicKeyOf(c)));
    if (!next) break;
    path.push(next);
    cur = next;
  }
  if (!anchored) return verdict('CHAIN_UNTRUSTED', 'the certificate does not chain to the trust bundle');

  for (const c of path) {
    const who = c === leaf ? 'the certificate' : `CA "${c.subject.replace(/\n/g, ', ')}"`;
    if (opts.now < Date.parse(c.validFrom)) return verdict('CERT_NOT_YET_VALID', `${who} is not valid before ${c.validFrom}`);
    if (opts.now > Date.parse(c.validTo)) return verdict('CERT_EXPIRED', `${who} expired at ${c.validTo}`);
  }

  const issuer = path[1] ?? leaf;
  if (!opts.cache.coversIssuer(spkiOf(issuer))) {
    return verdict('CRL_MISSING', 'no cached CRL from the certificate issuer');
  }
  const s = opts.cache.status(leaf.serialNumber, opts.now);
  if (s.freshness === 'none') return verdict('CRL_MISSING', 'no CRL is cached');
  if (s.revoked) return verdict('REVOKED', `serial ${normalizeSerial(leaf.serialNumber)} is revoked${s.reason ? ` (${s.reason})` : ''}`);
  if (s.freshness === 'stale') {
    return verdict('CRL_STALE', `the cached CRL is past its nextUpdate ${new Date(s.nextUpdate ?? 0).toISOString()} plus grace`);
  }
  return verdict('OK', 'chains to the trust bundle, valid now, not revoked in a fresh CRL');
}
