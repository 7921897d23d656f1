import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TAG, contentOf, encodeOid, readSingle, readTlv, seq, tlv, toPem } from '../../common/der.js';
import { verifyEkCertificate, type EkTrustStore } from './ek-certificate.js';
import { ekRefusal } from './ek-test-expect.js';
import { encodeMultiValuedName, encodeName, ecKey, opensslVerify, rsaKey, testCa, testEkCertificate, type TestCa, type TestKeyPair, type TestName } from './ek-test-pki.js';

/**
 * Vendor CA and EK certificates that strict parsers refuse, reproduced byte for byte with our own
 * DER encoder (ek-test-pki.ts), accepted with a valid signature and refused with a bad one:
 *  - STMicro: "STM TPM EK Intermediate CA 05" and older STM roots carry serial numbers that are not
 *    minimally encoded (leading 0x00 octets). OpenSSL ("illegal padding"), node:crypto, Go and Python
 *    cryptography (InvalidValue at TbsCertificate::serial) refuse to parse them.
 *  - Nuvoton: the EK certificate's issuer is one multi-valued RDN whose SET is not in DER order, so
 *    Python cryptography fails with InvalidSetOrdering at ["TbsCertificate::issuer", 0, 2], exactly as
 *    keylime #944 shows, and the issuer bytes differ from the root's subject bytes.
 * The outside parsers run on the very bytes our verifier accepts, to show the quirks are the real ones.
 */
const run = promisify(execFile);
const PYTHON = '/usr/bin/python3';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'ek-quirks-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Python cryptography (Debian's python3-cryptography) parsing the DER: 'ok' or its error text. */
async function pythonCryptography(der: Buffer): Promise<string> {
  const file = join(dir, `py-${Math.random().toString(16).slice(2)}.der`);
  writeFileSync(file, der);
  const script = [
    'import sys',
    'from cryptography import x509',
    'try:',
    '  c = x509.load_der_x509_certificate(open(sys.argv[1], "rb").read())',
    '  c.issuer; c.subject; c.serial_number',
    '  print("ok")',
    'except ValueError as e:',
    '  print(e)',
  ].join('\n');
  const { stdout } = await run(PYTHON, ['-c', script, file]);
  return stdout.trim();
}

/** `openssl x509 -inform DER -noout`: can OpenSSL read the certificate at all? */
async function opensslReads(der: Buffer): Promise<boolean> {
  const file = join(dir, `o-${Math.random().toString(16).slice(2)}.der`);
  writeFileSync(file, der);
  try {
    await run('openssl', ['x509', '-inform', 'DER', '-in', file, '-noout']);
    return true;
  } catch {
    return false;
  }
}

const nodeParses = (der: Buffer): boolean => {
  try {
    new X509Certificate(der);
    return true;
  } catch {
    return false;
  }
};

const refusal = ekRefusal;

/** The certificate with the last octet of its signature flipped. */
function badSignature(der: Buffer): Buffer {
  const out = Buffer.from(der);
  out[out.length - 1]! ^= 0x01;
  return out;
}

/** The certificate with its serial INTEGER replaced by `serial` (content octets), the signature kept. */
function withSerial(der: Buffer, serial: Buffer): Buffer {
  const cert = readSingle(der, TAG.SEQUENCE, 'Certificate');
  const tbs = readTlv(der, cert.contentStart, cert.end);
  const version = readTlv(der, tbs.contentStart, tbs.end);
  const oldSerial = readTlv(der, version.end, tbs.end);
  const newTbs = seq(der.subarray(version.start, version.end), tlv(TAG.INTEGER, serial), der.subarray(oldSerial.end, tbs.end));
  return seq(newTbs, der.subarray(tbs.end, cert.end));
}

const serialOctets = (der: Buffer): Buffer => {
  const cert = readSingle(der, TAG.SEQUENCE, 'Certificate');
  const tbs = readTlv(der, cert.contentStart, cert.end);
  const version = readTlv(der, tbs.contentStart, tbs.end);
  return Buffer.from(contentOf(der, readTlv(der, version.end, tbs.end)));
};

describe('STMicro: vendor CA certificates whose serial numbers are not minimally encoded', () => {
  const stm = (cn: string): TestName => [['C', 'CH'], ['O', 'STMicroelectronics NV'], ['CN', cn]];
  let root: TestCa;
  let inter: TestCa;
  let ek: TestKeyPair;
  let leaf: Buffer;
  let trust: EkTrustStore;

  beforeAll(() => {
    // RSA-2048 CAs as STM's; serials 00 01 and 00 00 05: one and two padding octets.
    root = testCa({ name: stm('STM TPM EK Root CA'), key: rsaKey(), serial: Buffer.from('0001', 'hex') });
    inter = testCa({ name: stm('STM TPM EK Intermediate CA 05'), key: rsaKey(), issuer: root, pathLen: 0, serial: Buffer.from('000005', 'hex') });
    ek = rsaKey();
    leaf = testEkCertificate({ issuer: inter, ek: ek.publicKey });
    trust = { roots: [root.pem], intermediates: [inter.pem] };
  });

  it('the chain is accepted; OpenSSL, node:crypto and Python cryptography cannot even parse its CA certificates', async () => {
    const v = verifyEkCertificate(leaf, trust, Date.now(), { ekValidity: 'strict' });
    expect(v.chain.map((c) => c.subject)).toEqual(['', 'C=CH\nO=STMicroelectronics NV\nCN=STM TPM EK Intermediate CA 05', 'C=CH\nO=STMicroelectronics NV\nCN=STM TPM EK Root CA']);
    expect(v.root).toBe('C=CH\nO=STMicroelectronics NV\nCN=STM TPM EK Root CA');
    expect(v.ekKeyType).toBe('rsa');
    // The serials are kept as encoded and shown by value.
    expect(v.chain[1]!.fields.serial.toString('hex')).toBe('000005');
    expect(v.chain[1]!.fields.serialHex).toBe('05');
    expect(v.chain[2]!.fields.serialHex).toBe('01');
    // The same bytes, through the parsers a verifier would otherwise use.
    for (const ca of [root, inter]) {
      expect(nodeParses(ca.der)).toBe(false);
      expect(await opensslReads(ca.der)).toBe(false);
      expect(await pythonCryptography(ca.der)).toMatch(/InvalidValue.*TbsCertificate::serial/);
    }
    // The EK certificate itself is ordinary DER: everyone reads it.
    expect(nodeParses(leaf)).toBe(true);
    expect(await pythonCryptography(leaf)).toBe('ok');
  });

  it('with a bad signature, the intermediate or the EK certificate is refused (EK_UNTRUSTED, naming the link)', () => {
    const forgedInter = badSignature(inter.der);
    const e1 = refusal(() => verifyEkCertificate(leaf, { roots: [root.pem], intermediates: [toPem(forgedInter, 'CERTIFICATE')] }, Date.now()), 'EK_UNTRUSTED');
    expect(e1.message).toMatch(/the signature of CA certificate "C=CH, O=STMicroelectronics NV, CN=STM TPM EK Intermediate CA 05" \(serial 05\) does not verify with the key of trusted root "C=CH, O=STMicroelectronics NV, CN=STM TPM EK Root CA" \(serial 01\)/);
    const e2 = refusal(() => verifyEkCertificate(badSignature(leaf), trust, Date.now()), 'EK_UNTRUSTED');
    expect(e2.message).toMatch(/the signature of EK certificate .* does not verify with the key of CA certificate "C=CH, O=STMicroelectronics NV, CN=STM TPM EK Intermediate CA 05"/);
  });

  it('the signature is checked over the TBS bytes as the vendor encoded them: the serial re-encoded minimally breaks it (openssl agrees)', async () => {
    const canonical = withSerial(inter.der, Buffer.from('05', 'hex'));
    expect(serialOctets(canonical).toString('hex')).toBe('05');
    const canonicalPem = toPem(canonical, 'CERTIFICATE');
    const e = refusal(() => verifyEkCertificate(leaf, { roots: [root.pem], intermediates: [canonicalPem] }, Date.now()), 'EK_UNTRUSTED');
    expect(e.message).toMatch(/signature of CA certificate .*Intermediate CA 05" \(serial 05\) does not verify/);
    // OpenSSL reads the canonical twin, and finds its signature wrong too (error 7), given a root it can read.
    expect(await opensslReads(canonical)).toBe(true);
    const readableRoot = testCa({ name: stm('STM TPM EK Root CA'), key: root.key });
    const canonicalLeafChain = await opensslVerify(leaf, [readableRoot.pem], [canonicalPem]);
    expect(canonicalLeafChain.ok).toBe(false);
    expect(canonicalLeafChain.errors).toContain(7); // X509_V_ERR_CERT_SIGNATURE_FAILURE
  });
});

describe('Nuvoton: an issuer Name whose SET is not in DER order', () => {
  const attrs: TestName = [['CN', 'Nuvoton TPM Root CA 2111'], ['O', 'Nuvoton Technology Corporation'], ['C', 'TW']];
  let root: TestCa;
  let ek: TestKeyPair;
  let leaf: Buffer;

  beforeAll(() => {
    // The root's own subject is proper DER; the EK certificate names it with the SET as given.
    root = testCa({ name: encodeMultiValuedName(attrs, 'der'), key: rsaKey() });
    ek = ecKey('P-256');
    leaf = testEkCertificate({ issuer: root, ek: ek.publicKey, issuerName: encodeMultiValuedName(attrs, 'as-given') });
  });

  it('is accepted although its issuer bytes differ from the root subject; openssl verify agrees; Python cryptography fails as in keylime #944', async () => {
    expect(encodeMultiValuedName(attrs, 'as-given').equals(encodeMultiValuedName(attrs, 'der'))).toBe(false);
    const v = verifyEkCertificate(leaf, { roots: [root.pem] }, Date.now(), { ekValidity: 'strict' });
    expect(v.root).toBe('C=TW + CN=Nuvoton TPM Root CA 2111 + O=Nuvoton Technology Corporation');
    expect(v.certificate.issuer).toBe('CN=Nuvoton TPM Root CA 2111 + O=Nuvoton Technology Corporation + C=TW');
    expect(v.ekKeyType).toBe('ec');
    expect(await opensslVerify(leaf, [root.pem], [])).toEqual({ ok: true, errors: [] });
    // "RawCertificate" in Debian's 38, "Certificate" in later releases.
    expect(await pythonCryptography(leaf)).toMatch(/^error parsing asn1 value: ParseError \{ kind: InvalidSetOrdering, location: \["(Raw)?Certificate::tbs_cert", "TbsCertificate::issuer", 0, 2\] \}$/);
    expect(await pythonCryptography(root.der)).toBe('ok');
  });

  it('is accepted when the root encodes its own subject out of order too (issuer and subject bytes equal)', async () => {
    const unsortedRoot = testCa({ name: encodeMultiValuedName(attrs, 'as-given'), key: rsaKey() });
    const l = testEkCertificate({ issuer: unsortedRoot, ek: ek.publicKey });
    expect(verifyEkCertificate(l, { roots: [unsortedRoot.pem] }, Date.now()).root).toBe('CN=Nuvoton TPM Root CA 2111 + O=Nuvoton Technology Corporation + C=TW');
    expect((await opensslVerify(l, [unsortedRoot.pem], [])).ok).toBe(true);
  });

  it('with a bad signature it is refused; a permuted name that differs in one value does not match at all', async () => {
    expect(refusal(() => verifyEkCertificate(badSignature(leaf), { roots: [root.pem] }, Date.now()), 'EK_UNTRUSTED').message).toMatch(
      /the signature of EK certificate .* does not verify with the key of trusted root "C=TW \+ CN=Nuvoton TPM Root CA 2111 \+ O=Nuvoton Technology Corporation"/,
    );
    expect((await opensslVerify(badSignature(leaf), [root.pem], [])).ok).toBe(false);
    // Signed by the root's key, but naming "...2112": no issuer by that name, even with the key ids agreeing.
    const other = testEkCertificate({
      issuer: root,
      ek: ek.publicKey,
      issuerName: encodeMultiValuedName([['O', 'Nuvoton Technology Corporation'], ['CN', 'Nuvoton TPM Root CA 2112'], ['C', 'TW']], 'as-given'),
    });
    expect(refusal(() => verifyEkCertificate(other, { roots: [root.pem] }, Date.now()), 'EK_UNTRUSTED').message).toMatch(/does not chain to a trusted TPM manufacturer root$/);
  });

  it('name matching ignores string type, case and spacing (RFC 5280 §7.1), never RDN order or values', () => {
    const vendor = testCa({ name: [['C', 'TW'], ['O', 'Nuvoton Technology Corporation'], ['CN', 'Nuvoton TPM Root CA 2111']], key: rsaKey() });
    const trust = { roots: [vendor.pem] };
    const issuedAs = (issuerName: Buffer) => testEkCertificate({ issuer: vendor, ek: ek.publicKey, issuerName });
    // PrintableString instead of UTF8String, other case, doubled and trailing spaces.
    const printable = (oid: string, value: string) => tlv(TAG.SET, seq(encodeOid(oid), tlv(TAG.PRINTABLE_STRING, Buffer.from(value))));
    const loose = seq(printable('2.5.4.6', 'tw'), printable('2.5.4.10', 'NUVOTON  Technology Corporation '), printable('2.5.4.3', 'nuvoton tpm root ca 2111'));
    expect(verifyEkCertificate(issuedAs(loose), trust, Date.now()).root).toBe('C=TW\nO=Nuvoton Technology Corporation\nCN=Nuvoton TPM Root CA 2111');
    // The same RDNs in another sequence order are another name.
    const reordered = encodeName([['O', 'Nuvoton Technology Corporation'], ['C', 'TW'], ['CN', 'Nuvoton TPM Root CA 2111']]);
    refusal(() => verifyEkCertificate(issuedAs(reordered), trust, Date.now()), 'EK_UNTRUSTED');
    // Three RDNs folded into one multi-valued RDN are another name too.
    refusal(() => verifyEkCertificate(issuedAs(encodeMultiValuedName([['C', 'TW'], ['O', 'Nuvoton Technology Corporation'], ['CN', 'Nuvoton TPM Root CA 2111']], 'der')), trust, Date.now()), 'EK_UNTRUSTED');
  });
});
