import { X509Certificate } from 'node:crypto';
import { attributesOf, parsePublic2b, publicToSpki } from '../../../native/lib/wire/public.js';
import { verifyPeer } from '../peer-verify.js';
import { identityPhase, judgeNow, rotationTime, type OfflineBudget, type PhasePolicy } from '../policy.js';
import { fail, humanDuration, ok, warn, type CheckResult } from './check-result.js';
import type { DeviceView } from './device-view.js';

/** No identity to judge: not enrolled, or the running agent did not record it in its snapshot. */
function missingIdentity(name: 'identity-key' | 'certificate', view: DeviceView): CheckResult {
  if (view.source === 'snapshot') {
    return warn(name, 'CHECK_IDENTITY_NOT_RECORDED', 'the running agent has not recorded its identity in its snapshot; stop the agent for this check');
  }
  return fail(name, 'CHECK_NO_IDENTITY', view.agentRunning ? 'the running agent holds no identity yet (enrolling?)' : 'no identity stored: the device has not enrolled');
}

/**
 * The identity key's public area (TPM2B_PUBLIC as stored) carries the certificate's public key. No
 * TPM load: the stored public blob is what the TPM would load with the private blob (the TPM binds the
 * two by the integrity HMAC; a blob pair that does not belong together fails there, at handshake time).
 */
export function checkIdentityKey(view: DeviceView): CheckResult {
  const id = view.identity;
  if (!id) return missingIdentity('identity-key', view);
  let keySpki: Buffer;
  let tpmBound: boolean;
  try {
    const pub = parsePublic2b(id.keyPublic);
    keySpki = publicToSpki(pub);
    const a = attributesOf(pub);
    tpmBound = a.fixedTPM && a.fixedParent && a.sensitiveDataOrigin;
  } catch (e) {
    return fail('identity-key', 'CHECK_KEY_UNREADABLE', `the stored key's public area does not parse: ${(e as Error).message}`);
  }
  let certSpki: Buffer;
  try {
    certSpki = new X509Certificate(id.certificate).publicKey.export({ type: 'spki', format: 'der' });
  } catch {
    return fail('identity-key', 'CHECK_CERT_UNTRUSTED', `the stored certificate ${id.serial} does not parse`);
  }
  if (!keySpki.equals(certSpki)) return fail('identity-key', 'CHECK_KEY_MISMATCH', `the stored TPM key is not the key certificate ${id.serial} was issued for`);
  return ok('identity-key', `TPM key matches certificate ${id.serial}${tpmBound ? ' (fixedTPM, fixedParent, sensitiveDataOrigin)' : ''}`);
}

/**
 * The agent's own view of its certificate: path to the trust bundle, validity at the judged time
 * (system clock, never below the clock floor, as the agent judges), not revoked in the cached CRL, and
 * where it stands in the agent's renewal policy: warn inside the renewal window or within grace of
 * expiry (the agent is rotating or re-attesting), fail once expired.
 */
export function checkCertificate(view: DeviceView, o: { readonly now: number; readonly budget: OfflineBudget; readonly deviceId: string }): CheckResult {
  const id = view.identity;
  if (!id) return missingIdentity('certificate', view);
  const judged = judgeNow(o.now, view.clockFloor).now;
  const verdict = verifyPeer(id.certificate, { trustBundle: view.trustBundle, chain: view.caCertificates, now: judged, cache: view.revocation });
  switch (verdict.code) {
    case 'CHAIN_UNTRUSTED':
      return fail('certificate', 'CHECK_CERT_UNTRUSTED', `${id.serial}: ${verdict.reason}`);
    case 'CERT_NOT_YET_VALID':
      return fail('certificate', 'CHECK_CERT_NOT_YET_VALID', `${id.serial}: ${verdict.reason}`);
    case 'CERT_EXPIRED':
      return fail('certificate', 'CHECK_CERT_EXPIRED', `${id.serial}: ${verdict.reason}`);
    case 'REVOKED':
      return fail('certificate', 'CHECK_CERT_REVOKED', `${id.serial}: ${verdict.reason}`);
    default:
      // OK, or CRL_STALE / CRL_MISSING: the crl check reports those.
      break;
  }
  const cert = new X509Certificate(id.certificate);
  const window = { serial: id.serial, notBefore: Date.parse(cert.validFrom), notAfter: Date.parse(cert.validTo) };
  const policy = phasePolicyFor(o.budget, window);
  const left = `expires ${new Date(window.notAfter).toISOString()} (in ${humanDuration(window.notAfter - judged)})`;
  switch (identityPhase(judged, window, policy, o.deviceId)) {
    case 'expired':
      return fail('certificate', 'CHECK_CERT_EXPIRED', `${id.serial} ${left}`);
    case 'expiring':
      return warn('certificate', 'CHECK_CERT_EXPIRING', `${id.serial} ${left}: within the ${humanDuration(policy.graceSec * 1000)} grace; the agent re-attests`);
    case 'renew':
      return warn('certificate', 'CHECK_CERT_RENEWAL_DUE', `${id.serial} ${left}: past its renewal point; the agent should have rotated it`);
    default:
      return ok('certificate', `${id.serial} chains to the trust bundle, ${left}, renewal from ${new Date(rotationTime(window, policy, o.deviceId)).toISOString()}`);
  }
}

/**
 * The agent's phase policy for a certificate: the budget's grace is declared for its lifetime, and a
 * certificate of another lifetime gets the grace scaled to it (as the agent does, agent.ts #phasePolicy).
 */
export function phasePolicyFor(b: OfflineBudget, cert: { readonly notBefore: number; readonly notAfter: number }): PhasePolicy {
  const lifetimeSec = (cert.notAfter - cert.notBefore) / 1000;
  if (Math.abs(lifetimeSec - b.lifetimeSec) <= b.lifetimeSec * 0.01) return b;
  return { ...b, graceSec: (b.graceSec * lifetimeSec) / b.lifetimeSec };
}
