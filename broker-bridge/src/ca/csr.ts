import { verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { DerError, TAG, bytesOf, contentOf, expectTlv, readSingle, readTlv } from '../../../common/der.js';
import { CaError } from './errors.js';
import { classifyEcSpki, ecKeyObject, type DeviceCurve } from './spki.js';

/**
 * PKCS#10 parsing and proof-of-possession check, without a generic ASN.1 library: a strict DER walk
 * over CertificationRequest, then one node:crypto verify over the CertificationRequestInfo bytes.
 * Only what the CA uses is extracted (SPKI, subject CN); requested extensions are ignored on purpose,
 * the profile decides every extension.
 */

export interface CsrParseOptions {
  /** Input size limit in bytes (PEM or DER), checked before any parsing. */
  readonly maxBytes?: number;
}

export interface VerifiedCsr {
  /** Canonical DER SubjectPublicKeyInfo (as in the CSR). */
  readonly publicKeySpki: Buffer;
  readonly publicKey: KeyObject;
  readonly curve: DeviceCurve;
  readonly commonName: string | undefined;
  readonly signatureAlgorithm: 'ecdsa-with-SHA256' | 'ecdsa-with-SHA384' | 'ecdsa-with-SHA512';
}

export const DEFAULT_CSR_MAX_BYTES = 4096;

const SIG_ALGS = new Map<string, { name: VerifiedCsr['signatureAlgorithm']; hash: string }>([
  ['06082a8648ce3d040302', { name: 'ecdsa-with-SHA256', hash: 'sha256' }],
  ['06082a8648ce3d040303', { name: 'ecdsa-with-SHA384', hash: 'sha384' }],
  ['06082a8648ce3d040304', { name: 'ecdsa-with-SHA512', hash: 'sha512' }],
]);
const OID_CN = Buffer.from('0603550403', 'hex');
const PEM_RE = /^\s*-----BEGIN (?:NEW )?CERTIFICATE REQUEST-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END (?:NEW )?CERTIFICATE REQUEST-----\s*$/;

function bad(reason: string, message: string, cause?: unknown): CaError {
  return new CaError('CA_BAD_CSR', message, { details: { reason }, cause });
}

/** Parses a PEM or DER CSR and verifies its self-signature. Throws CaError('CA_BAD_CSR'). */
export function parseAndVerifyCsr(input: Buffer | string, opts: CsrParseOptions = {}): VerifiedCsr {
  const maxBytes = opts.maxBytes ?? DEFAULT_CSR_MAX_BYTES;
  if (input.length > maxBytes) throw bad('too_large', `CSR exceeds ${maxBytes} bytes`);
  const der = toDer(input);

  let cri: Buffer, spkiDer: Buffer, sigAlgOid: string, signature: Buffer, commonName: string | undefined;
  try {
    const outer = readSingle(der, TAG.SEQUENCE, 'CertificationRequest');
    const criTlv = expectTlv(der, outer.contentStart, outer.end, TAG.SEQUENCE, 'CertificationRequestInfo');
    const version = expectTlv(der, criTlv.contentStart, criTlv.end, TAG.INTEGER, 'version');
    if (version.end - version.contentStart !== 1 || der[version.contentStart] !== 0) throw new DerError('version must be 0');
    const subject = expectTlv(der, version.end, criTlv.end, TAG.SEQUENCE, 'subject');
    commonName = readCommonName(der, subject.contentStart, subject.end);
    const spki = expectTlv(der, subject.end, criTlv.end, TAG.SEQUENCE, 'subjectPKInfo');
    const attrs = expectTlv(der, spki.end, criTlv.end, 0xa0, 'attributes');
    if (attrs.end !== criTlv.end) throw new DerError('CertificationRequestInfo: trailing data');

    const alg = expectTlv(der, criTlv.end, outer.end, TAG.SEQUENCE, 'signatureAlgorithm');
    const algOid = expectTlv(der, alg.contentStart, alg.end, TAG.OID, 'algorithm');
    if (algOid.end !== alg.end) throw new DerError('ECDSA signature algorithm must have absent parameters');
    const sig = expectTlv(der, alg.end, outer.end, TAG.BIT_STRING, 'signature');
    if (sig.end !== outer.end) throw new DerError('CertificationRequest: trailing data');
    if (sig.end - sig.contentStart < 2 || der[sig.contentStart] !== 0) throw new DerError('signature: unused bits');

    cri = bytesOf(der, criTlv);
    spkiDer = Buffer.from(bytesOf(der, spki));
    sigAlgOid = bytesOf(der, algOid).toString('hex');
    signature = der.subarray(sig.contentStart + 1, sig.end);
  } catch (e) {
    if (e instanceof CaError) throw e;
    throw bad('malformed', `malformed CSR: ${(e as Error).message}`, e);
  }

  const alg = SIG_ALGS.get(sigAlgOid);
  if (!alg) throw bad('unsupported_algorithm', 'CSR signature algorithm not supported (ECDSA with SHA-2 only)');
  const ec = classifyEcSpki(spkiDer);
  if (!ec) throw bad('unsupported_key', 'CSR key must be EC P-256 or P-384 with an uncompressed point');
  let publicKey: KeyObject;
  try {
    publicKey = ecKeyObject(ec);
  } catch (e) {
    throw bad('bad_key', 'CSR public key point is invalid', e);
  }
  let ok: boolean;
  try {
    ok = cryptoVerify(alg.hash, cri, publicKey, signature);
  } catch (e) {
    throw bad('bad_signature', 'CSR signature is malformed', e);
  }
  if (!ok) throw bad('bad_signature', 'CSR signature does not verify');
  return { publicKeySpki: spkiDer, publicKey, curve: ec.curve, commonName, signatureAlgorithm: alg.name };
}

function toDer(input: Buffer | string): Buffer {
  if (typeof input !== 'string') {
    if (input[0] === TAG.SEQUENCE) return input;
    input = input.toString('latin1');
  }
  const m = PEM_RE.exec(input);
  if (!m) throw bad('malformed', 'expected a DER or PEM CERTIFICATE REQUEST');
  return Buffer.from((m[1] as string).replace(/\s+/g, ''), 'base64');
}

/** The single CN of a Name, if any; several CNs are refused as ambiguous. */
function readCommonName(der: Buffer, start: number, end: number): string | undefined {
  let cn: string | undefined;
  for (let p = start; p < end; ) {
    const rdn = expectTlv(der, p, end, TAG.SET, 'RelativeDistinguishedName');
    p = rdn.end;
    for (let q = rdn.contentStart; q < rdn.end; ) {
      const atv = expectTlv(der, q, rdn.end, TAG.SEQUENCE, 'AttributeTypeAndValue');
      q = atv.end;
      const type = expectTlv(der, atv.contentStart, atv.end, TAG.OID, 'attribute type');
      const value = readTlv(der, type.end, atv.end);
      if (value.end !== atv.end) throw new DerError('AttributeTypeAndValue: trailing data');
      if (!bytesOf(der, type).equals(OID_CN)) continue;
      if (cn !== undefined) throw new DerError('more than one commonName');
      const raw = contentOf(der, value);
      if (value.tag === TAG.UTF8_STRING) {
        cn = raw.toString('utf8');
        if (!Buffer.from(cn, 'utf8').equals(raw)) throw new DerError('commonName is not valid UTF-8');
      } else if (value.tag === TAG.PRINTABLE_STRING || value.tag === TAG.IA5_STRING) {
        if (raw.some((b) => b > 0x7f)) throw new DerError('commonName is not ASCII');
        cn = raw.toString('latin1');
      } else {
        throw new DerError('commonName string type not supported');
      }
    }
  }
  return cn;
}
