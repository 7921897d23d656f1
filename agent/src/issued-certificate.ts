import type { X509Certificate } from 'node:crypto';
import { CodedError } from '../../common/coded-error.js';
import { publicKeyOf, spkiOf, x509FromPem } from '../../common/x509-cache.js';
import type { IdentitySlot, StoredBlobs } from './store.js';

/**
 * Checks a certificate the fleet issued before the agent stores and uses it: it must certify exactly
 * our TPM key, name this device, be valid now, and chain to the trust bundle the agent already had
 * (the bootstrap bundle the enrollment connection was authenticated with; a bundle arriving in the
 * same message as the certificate could vouch for anything).
 */
export type IssuedCertificateErrorCode = 'AGENT_CERTIFICATE_INVALID';

export function checkIssuedCertificate(opts: {
  readonly certificate: string;
  readonly chain: readonly string[];
  readonly trustBundle: readonly string[];
  readonly keySpki: Buffer;
  readonly deviceId: string;
  /** The serial the message around the certificate claims (lowercase hex). */
  readonly serial?: string;
  readonly now: number;
}): { readonly notBefore: number; readonly notAfter: number } {
  const fail = (why: string): never => {
    throw new CodedError<IssuedCertificateErrorCode>('AGENT_CERTIFICATE_INVALID', `issued certificate rejected: ${why}`);
  };
  let leaf: X509Certificate;
  let pool: X509Certificate[];
  let roots: X509Certificate[];
  try {
    leaf = x509FromPem(opts.certificate);
    pool = opts.chain.map(x509FromPem);
    roots = opts.trustBundle.map(x509FromPem);
  } catch {
    return fail('unparseable PEM');
  }
  if (!spkiOf(leaf).equals(opts.keySpki)) fail('it is not for our TPM key');
  if (!leaf.subject.split('\n').includes(`CN=${opts.deviceId}`)) fail('it does not name this device');
  const notBefore = Date.parse(leaf.validFrom);
  const notAfter = Date.parse(leaf.validTo);
  if (notAfter <= opts.now) fail('it has already expired');
  if (opts.serial !== undefined && leaf.serialNumber.toLowerCase().replace(/^0+/, '') !== opts.serial.replace(/^0+/, '')) {
    fail('its serial differs from the one announced with it');
  }

  let cur = leaf;
  for (let depth = 0; depth <= pool.length; depth++) {
    const root = roots.find((r) => cur.checkIssued(r) && cur.verify(publicKeyOf(r)));
    if (root) return { notBefore, notAfter };
    const next = pool.find((c) => c.ca && c !== cur && cur.checkIssued(c) && cur.verify(publicKeyOf(c)));
    if (!next) break;
    cur = next;
  }
  return fail('it does not chain to the trust bundle');
}

/**
 * The identity to store for an accepted certificate (enrollment, re-attestation or rotation), after
 * checkIssuedCertificate: validity from the certificate itself, not from the message around it.
 */
export function acceptIssued(opts: {
  readonly body: { readonly certificate: string; readonly chain: readonly string[]; readonly serial: string };
  readonly key: StoredBlobs;
  readonly keySpki: Buffer;
  readonly trustBundle: readonly string[];
  readonly deviceId: string;
  readonly now: number;
}): IdentitySlot {
  const { body } = opts;
  const validity = checkIssuedCertificate({
    certificate: body.certificate,
    chain: body.chain,
    trustBundle: opts.trustBundle,
    keySpki: opts.keySpki,
    deviceId: opts.deviceId,
    serial: body.serial,
    now: opts.now,
  });
  return {
    key: opts.key,
    certificate: body.certificate,
    chain: body.chain,
    serial: body.serial,
    notBefore: validity.notBefore,
    notAfter: validity.notAfter,
    issuedAt: opts.now,
  };
}
