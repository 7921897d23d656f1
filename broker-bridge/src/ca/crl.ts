import type { Clock } from '../../../common/clock.js';
import { ECDSA_WITH_SHA256_ALGID, samePublicKey, type CaBackend } from './ca-backend.js';
import { parseIssuingCa, type IssuingCaInfo } from './ca-cert.js';
import { TAG, encodeTime, encodeUnsignedInteger, seq, tlv } from '../../../common/der.js';
import { assembleSigned } from './device-profile.js';
import { CaError } from './errors.js';

/** RFC 5280 5.3.1 CRLReason values (7 is unused). */
const REASON_CODES = {
  unspecified: 0,
  keyCompromise: 1,
  cACompromise: 2,
  affiliationChanged: 3,
  superseded: 4,
  cessationOfOperation: 5,
  certificateHold: 6,
  removeFromCRL: 8,
  privilegeWithdrawn: 9,
  aACompromise: 10,
} as const;
export type RevocationReason = keyof typeof REASON_CODES;
/** Every reason an operator may give (RFC 5280 5.3.1 names; removeFromCRL belongs to delta CRLs only). */
export const REVOCATION_REASONS: readonly RevocationReason[] = (Object.keys(REASON_CODES) as RevocationReason[]).filter((r) => r !== 'removeFromCRL');

export interface RevokedCertificate {
  /** Hex of the serial number (as IssueResponse.serialNumber). */
  readonly serialNumber: string;
  readonly revokedAt: Date;
  readonly reason?: RevocationReason;
}

export interface CrlRequest {
  /** Monotonic CRL number; the caller persists it. Complete and delta CRLs share the sequence. */
  readonly crlNumber: bigint | number;
  /** nextUpdate = thisUpdate + this. */
  readonly nextUpdateSec: number;
  readonly revoked: readonly RevokedCertificate[];
  /**
   * Makes a delta CRL (RFC 5280 5.2.4): the critical deltaCRLIndicator carries this BaseCRLNumber, the
   * number of the complete CRL the delta applies to (less than `crlNumber`). `revoked` then lists the
   * changes since that complete CRL; only a delta may use the reason `removeFromCRL`.
   */
  readonly baseCrlNumber?: bigint | number;
}

export interface CrlResponse {
  readonly crlDer: Buffer;
  readonly thisUpdate: Date;
  readonly nextUpdate: Date;
  readonly crlNumber: bigint;
  /** Set for a delta CRL: the BaseCRLNumber it names. */
  readonly baseCrlNumber?: bigint;
}

const V2 = Buffer.from('020101', 'hex');
const OID_AKI = Buffer.from('0603551d23', 'hex');
const OID_CRL_NUMBER = Buffer.from('0603551d14', 'hex');
const OID_REASON = Buffer.from('0603551d15', 'hex');
const OID_DELTA_CRL_INDICATOR = Buffer.from('0603551d1b', 'hex');
const CRITICAL = Buffer.from('0101ff', 'hex');

/** Signs v2 CRLs for the issuing CA with the same backend that signs certificates. */
export class CrlSigner {
  readonly issuingCa: IssuingCaInfo;
  readonly #backend: CaBackend;
  readonly #clock: Clock;
  readonly #prefix: Buffer;
  readonly #aki: Buffer;

  constructor(opts: { backend: CaBackend; issuingCertificate: Buffer | string; clock: Clock }) {
    this.issuingCa = parseIssuingCa(opts.issuingCertificate);
    if (!samePublicKey(this.issuingCa.publicKey, opts.backend.publicKey())) {
      throw new CaError('CA_CONFIG_INVALID', 'issuing CA certificate does not match the backend key');
    }
    this.#backend = opts.backend;
    this.#clock = opts.clock;
    this.#prefix = Buffer.concat([V2, ECDSA_WITH_SHA256_ALGID, this.issuingCa.subjectDer]);
    this.#aki = seq(OID_AKI, tlv(TAG.OCTET_STRING, seq(tlv(0x80, this.issuingCa.subjectKeyId))));
  }

  async sign(req: CrlRequest): Promise<CrlResponse> {
    const crlNumber = crlNumberOf(req.crlNumber, 'crlNumber');
    const baseCrlNumber = req.baseCrlNumber === undefined ? undefined : crlNumberOf(req.baseCrlNumber, 'baseCrlNumber');
    if (baseCrlNumber !== undefined && baseCrlNumber >= crlNumber) {
      throw new CaError('CA_BAD_REQUEST', 'a delta CRL applies to an earlier complete CRL (baseCrlNumber < crlNumber)');
    }
    if (!Number.isSafeInteger(req.nextUpdateSec) || req.nextUpdateSec <= 0) {
      throw new CaError('CA_BAD_REQUEST', 'nextUpdateSec must be a positive integer');
    }
    const thisUpdate = Math.floor(this.#clock.now() / 1000) * 1000;
    const nextUpdate = thisUpdate + req.nextUpdateSec * 1000;

    const entries: Buffer[] = [];
    const seen = new Set<string>();
    for (const r of req.revoked) {
      const serial = (typeof r.serialNumber === 'string' ? r.serialNumber : '').toLowerCase().replace(/^0+(?=.)/, '');
      if (!/^[0-9a-f]{1,40}$/.test(serial) || /^0+$/.test(serial)) {
        throw new CaError('CA_BAD_REQUEST', `invalid revoked serial number ${JSON.stringify(r.serialNumber)}`);
      }
      if (seen.has(serial)) throw new CaError('CA_BAD_REQUEST', `serial ${serial} listed twice`);
      seen.add(serial);
      const at = r.revokedAt instanceof Date ? r.revokedAt.getTime() : NaN;
      if (!Number.isFinite(at)) throw new CaError('CA_BAD_REQUEST', 'revokedAt must be a valid date');
      const parts = [encodeUnsignedInteger(BigInt('0x' + serial)), encodeTime(Math.floor(at / 1000) * 1000)];
      const reason = r.reason ?? 'unspecified';
      if (!Object.hasOwn(REASON_CODES, reason)) throw new CaError('CA_BAD_REQUEST', `unknown revocation reason ${String(reason)}`);
      const code = REASON_CODES[reason];
      // RFC 5280 5.3.1: removeFromCRL only appears in delta CRLs.
      if (reason === 'removeFromCRL' && baseCrlNumber === undefined) throw new CaError('CA_BAD_REQUEST', 'removeFromCRL is for delta CRLs only');
      // RFC 5280 5.3.1: reasonCode unspecified SHOULD be absent.
      if (code !== 0) parts.push(seq(seq(OID_REASON, tlv(TAG.OCTET_STRING, tlv(TAG.ENUMERATED, Buffer.from([code]))))));
      entries.push(seq(...parts));
    }

    const crlNumberExt = seq(OID_CRL_NUMBER, tlv(TAG.OCTET_STRING, encodeUnsignedInteger(crlNumber)));
    // RFC 5280 5.2.4: the deltaCRLIndicator MUST be critical; its value is the BaseCRLNumber.
    const deltaExt = baseCrlNumber === undefined ? [] : [seq(OID_DELTA_CRL_INDICATOR, CRITICAL, tlv(TAG.OCTET_STRING, encodeUnsignedInteger(baseCrlNumber)))];
    const tbs = seq(
      this.#prefix,
      encodeTime(thisUpdate),
      encodeTime(nextUpdate),
      ...(entries.length > 0 ? [tlv(TAG.SEQUENCE, Buffer.concat(entries))] : []),
      tlv(0xa0, seq(this.#aki, crlNumberExt, ...deltaExt)),
    );
    let signature: Buffer;
    try {
      ({ signature } = await this.#backend.sign({ tbs }));
    } catch (e) {
      if (e instanceof CaError) throw e;
      throw new CaError('CA_BACKEND_FAILED', 'CA backend failed to sign the CRL', { cause: e });
    }
    return {
      crlDer: assembleSigned(tbs, signature),
      thisUpdate: new Date(thisUpdate),
      nextUpdate: new Date(nextUpdate),
      crlNumber,
      ...(baseCrlNumber === undefined ? {} : { baseCrlNumber }),
    };
  }
}

function crlNumberOf(v: bigint | number, name: string): bigint {
  let n: bigint;
  try {
    n = BigInt(v);
  } catch {
    throw new CaError('CA_BAD_REQUEST', `${name} must be an integer`);
  }
  // RFC 5280 5.2.3: at most 20 octets, non-negative.
  if (n < 0n || n >= 1n << 159n) throw new CaError('CA_BAD_REQUEST', `${name} out of range`);
  return n;
}
