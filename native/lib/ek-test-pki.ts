import { execFile } from 'node:child_process';
import { createHash, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { TAG, encodeOid, encodeTime, encodeUnsignedInteger, expectTlv, readSingle, seq, tlv, toPem } from '../../common/der.js';
import { KEY_USAGE, OID, type KeyUsageName } from './certificate-fields.js';

/**
 * FOR TESTS AND THE SIMULATOR: builds X.509 certificates byte by byte (common/der.ts), so tests can make
 * the EK chains real vendors ship and the broken ones attackers would: empty subjects, the critical TCG
 * subjectAltName, explicit DEFAULT booleans (Intel PTT), any validity period, any extension. Generated
 * at run time, never checked in. The simulator's TPM factory (sim/src/factory.ts), a simulated TPM
 * vendor, issues its EK certificates with it; the agent, bridge and station never import this module.
 */
export interface TestKeyPair {
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
}

export const ecKey = (namedCurve: 'P-256' | 'P-384' = 'P-256'): TestKeyPair => generateKeyPairSync('ec', { namedCurve });
export const rsaKey = (modulusLength = 2048): TestKeyPair => generateKeyPairSync('rsa', { modulusLength });

export interface TestExtension {
  readonly oid: string;
  readonly critical?: boolean;
  /** Encode `critical FALSE` explicitly (DER says to omit it; some vendors do not). */
  readonly explicitNonCritical?: boolean;
  /** DER of the extension value (the content of extnValue). */
  readonly value: Buffer;
}

/** An RDN list such as [['CN', 'Root']]; [] is the empty name of real EK certificates. */
export type TestName = readonly (readonly [string, string])[];

const ATTR: Readonly<Record<string, string>> = {
  CN: '2.5.4.3',
  O: '2.5.4.10',
  OU: '2.5.4.11',
  C: '2.5.4.6',
  TPMManufacturer: '2.23.133.2.1',
  TPMModel: '2.23.133.2.2',
  TPMVersion: '2.23.133.2.3',
};

export function encodeName(name: TestName): Buffer {
  return seq(...name.map((attr) => tlv(TAG.SET, encodeAttribute(attr))));
}

function encodeAttribute([type, value]: readonly [string, string]): Buffer {
  const oid = ATTR[type] ?? type;
  const str = type === 'C' ? tlv(TAG.PRINTABLE_STRING, Buffer.from(value)) : tlv(TAG.UTF8_STRING, Buffer.from(value));
  return seq(encodeOid(oid), str);
}

/**
 * A Name of one multi-valued RDN holding `attrs`. `order: 'der'` sorts the SET's elements by their
 * encodings, as DER requires (X.690 §11.6); 'as-given' keeps them in the order given, as Nuvoton's EK
 * certificates encode their issuer ("InvalidSetOrdering" in strict parsers).
 */
export function encodeMultiValuedName(attrs: TestName, order: 'der' | 'as-given'): Buffer {
  const elements = attrs.map(encodeAttribute);
  if (order === 'der') elements.sort(compareDer);
  return seq(tlv(TAG.SET, ...elements));
}

/** X.690 §11.6 order: octet by octet, the shorter padded with zeros. */
function compareDer(a: Buffer, b: Buffer): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

const BOOLEAN = (v: boolean) => tlv(0x01, Buffer.from([v ? 0xff : 0x00]));

export const ext = {
  basicConstraints(ca: boolean, pathLen?: number, o: { critical?: boolean; explicitFalse?: boolean } = {}): TestExtension {
    const parts: Buffer[] = [];
    if (ca || o.explicitFalse) parts.push(BOOLEAN(ca));
    if (pathLen !== undefined) parts.push(encodeUnsignedInteger(pathLen));
    return { oid: OID.basicConstraints, critical: o.critical ?? true, value: seq(...parts) };
  },
  keyUsage(bits: readonly KeyUsageName[], critical = true): TestExtension {
    const idx = bits.map((b) => KEY_USAGE[b]);
    const max = Math.max(...idx);
    const bytes = Buffer.alloc((max >> 3) + 1);
    for (const i of idx) bytes[i >> 3]! |= 0x80 >> (i & 7);
    const unused = bytes.length * 8 - (max + 1);
    return { oid: OID.keyUsage, critical, value: tlv(TAG.BIT_STRING, Buffer.from([unused]), bytes) };
  },
  extKeyUsage(oids: readonly string[], critical = false): TestExtension {
    return { oid: OID.extKeyUsage, critical, value: seq(...oids.map(encodeOid)) };
  },
  /** The TCG EK subjectAltName: one directoryName with TPM manufacturer, model and version. */
  tcgSubjectAltName(critical = true): TestExtension {
    const dirName = encodeName([['TPMManufacturer', 'id:00001014'], ['TPMModel', 'swtpm'], ['TPMVersion', 'id:20191023']]);
    return { oid: OID.subjectAltName, critical, value: seq(tlv(0xa4, dirName)) };
  },
  /** subjectDirectoryAttributes with tcg-at-tpmSpecification (2.0, level 0, revision 164). */
  tcgSubjectDirectoryAttributes(critical = false, explicitNonCritical = false): TestExtension {
    const spec = seq(tlv(TAG.UTF8_STRING, Buffer.from('2.0')), encodeUnsignedInteger(0), encodeUnsignedInteger(164));
    return { oid: OID.subjectDirectoryAttributes, critical, explicitNonCritical, value: seq(seq(encodeOid('2.23.133.2.16'), tlv(TAG.SET, spec))) };
  },
  subjectKeyIdentifier(key: KeyObject): TestExtension {
    return { oid: OID.subjectKeyIdentifier, critical: false, value: tlv(TAG.OCTET_STRING, keyId(key)) };
  },
  authorityKeyIdentifier(issuerKey: KeyObject): TestExtension {
    return { oid: OID.authorityKeyIdentifier, critical: false, value: seq(tlv(0x80, keyId(issuerKey))) };
  },
  /** An extension nobody understands (a private-enterprise OID), NULL value. */
  unknown(critical: boolean, oid = '1.3.6.1.4.1.55555.1.1'): TestExtension {
    return { oid, critical, value: tlv(TAG.NULL, Buffer.alloc(0)) };
  },
};

/** RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING's bytes. */
function keyId(key: KeyObject): Buffer {
  const spki = key.export({ type: 'spki', format: 'der' });
  const outer = readSingle(spki, TAG.SEQUENCE, 'spki');
  const alg = expectTlv(spki, outer.contentStart, outer.end, TAG.SEQUENCE, 'algorithm');
  const bits = expectTlv(spki, alg.end, outer.end, TAG.BIT_STRING, 'subjectPublicKey');
  return createHash('sha1').update(spki.subarray(bits.contentStart + 1, bits.end)).digest();
}

export interface TestCertificateSpec {
  /** A name to encode, or the DER of a Name as it should appear byte for byte. */
  readonly subject: TestName | Buffer;
  readonly issuer: TestName | Buffer;
  /** A value (encoded minimally), or the INTEGER's content octets exactly (e.g. with padding zeros). */
  readonly serial: number | bigint | Buffer;
  readonly notBefore: number;
  readonly notAfter: number;
  readonly publicKey: KeyObject;
  readonly signingKey: KeyObject;
  readonly extensions: readonly TestExtension[];
}

export function buildCertificate(s: TestCertificateSpec): Buffer {
  const algId = s.signingKey.asymmetricKeyType === 'ec' ? seq(encodeOid('1.2.840.10045.4.3.2')) : seq(encodeOid('1.2.840.113549.1.1.11'), tlv(TAG.NULL, Buffer.alloc(0)));
  const exts = s.extensions.map((e) =>
    seq(encodeOid(e.oid), ...(e.critical ? [BOOLEAN(true)] : e.explicitNonCritical ? [BOOLEAN(false)] : []), tlv(TAG.OCTET_STRING, e.value)),
  );
  const tbs = seq(
    tlv(0xa0, encodeUnsignedInteger(2)),
    Buffer.isBuffer(s.serial) ? tlv(TAG.INTEGER, s.serial) : encodeUnsignedInteger(BigInt(s.serial)),
    algId,
    nameDer(s.issuer),
    seq(encodeTime(s.notBefore), encodeTime(s.notAfter)),
    nameDer(s.subject),
    s.publicKey.export({ type: 'spki', format: 'der' }),
    ...(exts.length ? [tlv(0xa3, seq(...exts))] : []),
  );
  const signature = sign('sha256', tbs, s.signingKey);
  return seq(tbs, algId, tlv(TAG.BIT_STRING, Buffer.from([0]), signature));
}

const nameDer = (n: TestName | Buffer) => (Buffer.isBuffer(n) ? n : encodeName(n));

export interface TestCa {
  /** The subject, as given or as DER (the certificates it issues name it so, unless told otherwise). */
  readonly name: TestName | Buffer;
  readonly key: TestKeyPair;
  readonly der: Buffer;
  readonly pem: string;
}

const DAY = 86_400_000;
let serials = 0x1000;

/**
 * A CA certificate: self-signed when `issuer` is absent. Default extensions: basicConstraints
 * cA=TRUE (critical, with `pathLen` if given), keyUsage keyCertSign+cRLSign, SKI, AKI; `extensions`
 * replaces them entirely when given.
 */
export function testCa(o: {
  name: TestName | Buffer;
  issuer?: TestCa;
  /** The serial's INTEGER content octets exactly (default: the next serial, minimal). */
  serial?: Buffer;
  key?: TestKeyPair;
  pathLen?: number;
  notBefore?: number;
  notAfter?: number;
  extensions?: (key: TestKeyPair, issuerKey: KeyObject) => TestExtension[];
}): TestCa {
  const key = o.key ?? ecKey();
  const issuerKey = o.issuer?.key ?? key;
  const now = Date.now();
  const extensions = o.extensions
    ? o.extensions(key, issuerKey.publicKey)
    : [
        ext.basicConstraints(true, o.pathLen),
        ext.keyUsage(['keyCertSign', 'cRLSign']),
        ext.subjectKeyIdentifier(key.publicKey),
        ext.authorityKeyIdentifier(issuerKey.publicKey),
      ];
  const der = buildCertificate({
    subject: o.name,
    issuer: o.issuer?.name ?? o.name,
    serial: o.serial ?? serials++,
    notBefore: o.notBefore ?? now - DAY,
    notAfter: o.notAfter ?? now + 3650 * DAY,
    publicKey: key.publicKey,
    signingKey: issuerKey.privateKey,
    extensions,
  });
  return { name: o.name, key, der, pem: toPem(der, 'CERTIFICATE') };
}

/**
 * An EK certificate as the TCG profile describes it: empty subject, critical TCG subjectAltName,
 * subjectDirectoryAttributes, basicConstraints cA=FALSE, keyUsage keyEncipherment (RSA) or
 * keyAgreement (ECC), extKeyUsage tcg-kp-EKCertificate, AKI. `extensions` replaces that list.
 */
export function testEkCertificate(o: {
  issuer: TestCa;
  ek: KeyObject;
  notBefore?: number;
  notAfter?: number;
  serial?: number | Buffer;
  /** The issuer Name's DER as this certificate should carry it (default: the issuer's subject). */
  issuerName?: Buffer;
  extensions?: TestExtension[];
}): Buffer {
  const now = Date.now();
  return buildCertificate({
    subject: [],
    issuer: o.issuerName ?? o.issuer.name,
    serial: o.serial ?? serials++,
    notBefore: o.notBefore ?? now - DAY,
    notAfter: o.notAfter ?? now + 3650 * DAY,
    publicKey: o.ek,
    signingKey: o.issuer.key.privateKey,
    extensions: o.extensions ?? defaultEkExtensions(o.ek, o.issuer.key.publicKey),
  });
}

export function defaultEkExtensions(ek: KeyObject, issuerKey: KeyObject): TestExtension[] {
  return [
    ext.tcgSubjectAltName(true),
    ext.tcgSubjectDirectoryAttributes(false),
    ext.basicConstraints(false),
    ext.keyUsage([ek.asymmetricKeyType === 'rsa' ? 'keyEncipherment' : 'keyAgreement']),
    ext.extKeyUsage([OID.tcgKpEkCertificate]),
    ext.authorityKeyIdentifier(issuerKey),
  ];
}

/** X509_V_ERR_* of OpenSSL 3 (x509_vfy.h) that the EK chain tests meet; INVALID_CA was 24 before 3.0. */
export const X509_V = {
  CERT_NOT_YET_VALID: 9,
  CERT_HAS_EXPIRED: 10,
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 20,
  PATH_LENGTH_EXCEEDED: 25,
  INVALID_PURPOSE: 26,
  KEYUSAGE_NO_CERTSIGN: 32,
  UNHANDLED_CRITICAL_EXTENSION: 34,
  INVALID_CA: 79,
} as const;

const run = promisify(execFile);

/**
 * The oracle: `openssl verify -CAfile <roots> -untrusted <intermediates> [flags] <leaf>`. Resolves
 * ok, or the X509_V_ERR codes it printed (`error N at D depth lookup: ...`).
 */
export async function opensslVerify(
  leaf: Buffer,
  roots: readonly string[],
  intermediates: readonly string[],
  flags: readonly string[] = [],
): Promise<{ ok: boolean; errors: number[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'ek-openssl-'));
  try {
    const rootFile = join(dir, 'roots.pem');
    const interFile = join(dir, 'intermediates.pem');
    const leafFile = join(dir, 'leaf.pem');
    writeFileSync(rootFile, roots.join(''));
    writeFileSync(interFile, intermediates.join(''));
    writeFileSync(leafFile, toPem(leaf, 'CERTIFICATE'));
    const args = ['verify', '-CAfile', rootFile, ...(intermediates.length ? ['-untrusted', interFile] : []), ...flags, leafFile];
    try {
      const { stdout } = await run('openssl', args);
      return { ok: stdout.trim() === `${leafFile}: OK`, errors: [] };
    } catch (e) {
      const out = `${(e as { stdout?: string }).stdout ?? ''}${(e as { stderr?: string }).stderr ?? ''}`;
      return { ok: false, errors: [...out.matchAll(/error (\d+) at \d+ depth lookup/g)].map((m) => Number(m[1])) };
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** openssl's -attime argument for an epoch-ms instant. */
export const attime = (ms: number): string[] => ['-attime', String(Math.floor(ms / 1000))];
