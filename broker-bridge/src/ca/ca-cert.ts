import { createHash, type KeyObject } from 'node:crypto';
import { publicKeyFromSpki } from './ca-backend.js';
import { DerError, TAG, bytesOf, contentOf, expectTlv, pemBlocks, readSingle, readTime, readTlv, type Tlv } from '../../../common/der.js';
import { CaError } from './errors.js';

/** What issuance and CRL signing need from the issuing CA certificate, read once at start-up. */
export interface IssuingCaInfo {
  readonly certificateDer: Buffer;
  /** The subject Name exactly as encoded in the CA certificate (becomes every leaf's issuer). */
  readonly subjectDer: Buffer;
  /** The CA's key identifier: its SKI extension if present, else RFC 5280 method 1. */
  readonly subjectKeyId: Buffer;
  readonly notBefore: number;
  readonly notAfter: number;
  readonly spkiDer: Buffer;
  readonly publicKey: KeyObject;
}

const OID_SKI = Buffer.from('0603551d0e', 'hex');
const OID_BASIC_CONSTRAINTS = Buffer.from('0603551d13', 'hex');
const OID_KEY_USAGE = Buffer.from('0603551d0f', 'hex');

/** RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING value (no tag, length, unused-bits byte). */
export function keyIdentifier(spkiDer: Buffer): Buffer {
  const bits = subjectPublicKeyBits(spkiDer);
  return createHash('sha1').update(bits).digest();
}

/** The subjectPublicKey bytes of an SPKI, after checking its outer structure. */
export function subjectPublicKeyBits(spkiDer: Buffer): Buffer {
  const outer = readSingle(spkiDer, TAG.SEQUENCE, 'SubjectPublicKeyInfo');
  const alg = expectTlv(spkiDer, outer.contentStart, outer.end, TAG.SEQUENCE, 'algorithm');
  const bits = expectTlv(spkiDer, alg.end, outer.end, TAG.BIT_STRING, 'subjectPublicKey');
  if (bits.end !== outer.end) throw new DerError('SubjectPublicKeyInfo: trailing data');
  if (bits.end - bits.contentStart < 2 || spkiDer[bits.contentStart] !== 0) {
    throw new DerError('subjectPublicKey: unused bits');
  }
  return spkiDer.subarray(bits.contentStart + 1, bits.end);
}

/** Accepts DER or PEM (the first CERTIFICATE block). */
export function certificateDer(input: Buffer | string): Buffer {
  if (typeof input !== 'string') {
    if (input[0] === TAG.SEQUENCE) return input;
    input = input.toString('utf8');
  }
  const [first] = pemBlocks(input, 'CERTIFICATE');
  if (!first) throw new CaError('CA_CONFIG_INVALID', 'no CERTIFICATE PEM block');
  return first;
}

export function parseIssuingCa(input: Buffer | string): IssuingCaInfo {
  const der = certificateDer(input);
  try {
    return parse(der);
  } catch (e) {
    if (e instanceof CaError) throw e;
    throw new CaError('CA_CONFIG_INVALID', `issuing CA certificate unreadable: ${(e as Error).message}`, { cause: e });
  }
}

function parse(der: Buffer): IssuingCaInfo {
  const cert = readSingle(der, TAG.SEQUENCE, 'Certificate');
  const tbs = expectTlv(der, cert.contentStart, cert.end, TAG.SEQUENCE, 'TBSCertificate');
  let t = readTlv(der, tbs.contentStart, tbs.end);
  if (t.tag === 0xa0) t = readTlv(der, t.end, tbs.end); // version
  if (t.tag !== TAG.INTEGER) throw new DerError('serialNumber');
  const sigAlg = expectTlv(der, t.end, tbs.end, TAG.SEQUENCE, 'signature');
  const issuer = expectTlv(der, sigAlg.end, tbs.end, TAG.SEQUENCE, 'issuer');
  const validity = expectTlv(der, issuer.end, tbs.end, TAG.SEQUENCE, 'validity');
  const nb = readTlv(der, validity.contentStart, validity.end);
  const na = readTlv(der, nb.end, validity.end);
  const subject = expectTlv(der, validity.end, tbs.end, TAG.SEQUENCE, 'subject');
  const spki = expectTlv(der, subject.end, tbs.end, TAG.SEQUENCE, 'subjectPublicKeyInfo');
  const spkiDer = Buffer.from(bytesOf(der, spki));

  let ski: Buffer | undefined;
  let isCa = false;
  let canSignCerts: boolean | undefined;
  for (let p = spki.end; p < tbs.end; ) {
    const f = readTlv(der, p, tbs.end);
    p = f.end;
    if (f.tag !== 0xa3) continue;
    const exts = expectTlv(der, f.contentStart, f.end, TAG.SEQUENCE, 'extensions');
    for (let q = exts.contentStart; q < exts.end; ) {
      const ext = expectTlv(der, q, exts.end, TAG.SEQUENCE, 'extension');
      q = ext.end;
      const id = expectTlv(der, ext.contentStart, ext.end, TAG.OID, 'extnID');
      let v = readTlv(der, id.end, ext.end);
      if (v.tag === 0x01) v = readTlv(der, v.end, ext.end); // critical
      if (v.tag !== TAG.OCTET_STRING) throw new DerError('extnValue');
      const oid = bytesOf(der, id);
      if (oid.equals(OID_SKI)) {
        ski = Buffer.from(contentOf(der, expectTlv(der, v.contentStart, v.end, TAG.OCTET_STRING, 'SKI')));
      } else if (oid.equals(OID_BASIC_CONSTRAINTS)) {
        const bc = expectTlv(der, v.contentStart, v.end, TAG.SEQUENCE, 'basicConstraints');
        if (bc.contentStart < bc.end) {
          const first: Tlv = readTlv(der, bc.contentStart, bc.end);
          isCa = first.tag === 0x01 && der[first.contentStart] === 0xff;
        }
      } else if (oid.equals(OID_KEY_USAGE)) {
        const ku = expectTlv(der, v.contentStart, v.end, TAG.BIT_STRING, 'keyUsage');
        const firstByte = ku.end - ku.contentStart >= 2 ? (der[ku.contentStart + 1] as number) : 0;
        canSignCerts = (firstByte & 0x04) !== 0; // keyCertSign is bit 5
      }
    }
  }
  if (!isCa) throw new CaError('CA_CONFIG_INVALID', 'issuing certificate is not a CA (basicConstraints cA false)');
  if (canSignCerts === false) throw new CaError('CA_CONFIG_INVALID', 'issuing certificate lacks keyUsage keyCertSign');

  return {
    certificateDer: Buffer.from(der),
    subjectDer: Buffer.from(bytesOf(der, subject)),
    subjectKeyId: ski ?? keyIdentifier(spkiDer),
    notBefore: readTime(der, nb),
    notAfter: readTime(der, na),
    spkiDer,
    publicKey: publicKeyFromSpki(spkiDer),
  };
}
