import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, createPublicKey, randomBytes, verify, webcrypto } from 'node:crypto';
import { startTpm, type TestTpm } from '../../test/harness/index.js';
import { NativeTpm } from '../lib/native-tpm.js';
import type { Tpm, TpmKey } from '../lib/tpm.js';
import { TpmError } from '../lib/tpm-error.js';
import { verifyEkCertificate } from '../lib/ek-certificate.js';
import { attributesOf } from '../lib/wire/public.js';
import { verifyTpmSignature } from '../lib/wire/signature.js';
import { quotePcrDigest } from '../lib/wire/pcr.js';
import { TPM_GENERATED_VALUE } from '../lib/wire/constants.js';
import { makeCredential } from '../lib/wire/make-credential.js';

/**
 * The Tpm conformance suite: every operation of the interface against a real (software) TPM.
 * Signatures are verified with node:crypto against the SPKI the TPM returned; nothing is mocked.
 */
const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest();

async function expectCode(p: Promise<unknown>, code: string | RegExp): Promise<TpmError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TpmError);
  const te = err as TpmError;
  if (typeof code === 'string') expect(te.code).toBe(code);
  else expect(te.code).toMatch(code);
  return te;
}

describe('NativeTpm conformance (swtpm)', () => {
  let sw: TestTpm;
  let tpm: Tpm;
  let srk: TpmKey;

  beforeAll(async () => {
    sw = await startTpm();
    tpm = await NativeTpm.open(sw.tcti);
    srk = await tpm.ensureSrk();
  });
  afterAll(async () => {
    await tpm?.close();
    await sw?.stop();
  });

  it('reports capabilities and random bytes', async () => {
    const caps = await tpm.capabilities();
    expect(caps.manufacturer).toBe('IBM');
    expect(caps.specRevision).toBeGreaterThanOrEqual(116);
    expect(caps.algorithms).toEqual(expect.arrayContaining([0x0023, 0x000b, 0x0018])); // ECC, SHA256, ECDSA
    const a = await tpm.getRandom(32);
    const b = await tpm.getRandom(32);
    expect(a).toHaveLength(32);
    expect(a.equals(b)).toBe(false);
    expect(await tpm.getRandom(1024)).toHaveLength(1024);
  });

  it('reads all 24 sha256 PCRs', async () => {
    const pcrs = await tpm.pcrRead('sha256', Array.from({ length: 24 }, (_, i) => i));
    expect(pcrs.size).toBe(24);
    for (const v of pcrs.values()) expect(v).toHaveLength(32);
  });

  for (const kind of ['rsa', 'ecc'] as const) {
    it(`reads the ${kind} EK certificate, which chains to the manufacturer and certifies the EK it re-derives`, async () => {
      const cert = await tpm.readEkCertificate(kind);
      expect(cert).not.toBeNull();
      const verified = verifyEkCertificate(cert!, { roots: [sw.manufacturerRootPem], intermediates: sw.manufacturerIntermediatePem ? [sw.manufacturerIntermediatePem] : [] }, Date.now());
      const ek = await tpm.createEk(kind);
      try {
        expect(verified.ekSpki.equals(ek.spki)).toBe(true);
        const attrs = attributesOf(ek.public);
        expect(attrs.restricted && attrs.decrypt && attrs.fixedTPM && attrs.adminWithPolicy).toBe(true);
        expect(ek.public.type).toBe(kind);
      } finally {
        await tpm.flush(ek);
      }
    });
  }

  it('keeps one SRK at its persistent handle', async () => {
    const again = await tpm.ensureSrk();
    expect(again.name.equals(srk.name)).toBe(true);
    expect(srk.persistentHandle).toBe(0x81000001);
    const attrs = attributesOf(srk.public);
    expect(attrs.restricted && attrs.decrypt && attrs.fixedTPM && attrs.noDA).toBe(true);
  });

  it('creates identity keys with the attributes that make them TPM-bound signing keys', async () => {
    const { key, blobs } = await tpm.createIdentityKey(srk);
    try {
      // Read back from the TPM itself, not from what we sent: persist and re-read the public area.
      await tpm.persist(key, 0x81000020);
      const readBack = await tpm.loadPersistent(0x81000020);
      expect(readBack!.name.equals(key.name)).toBe(true);
      const attrs = attributesOf(readBack!.public);
      expect(attrs).toMatchObject({ fixedTPM: true, fixedParent: true, sensitiveDataOrigin: true, userWithAuth: true, sign: true, decrypt: false, restricted: false });
      expect(blobs.private.length).toBeGreaterThan(32);
      await tpm.flush(readBack!);
      expect(await tpm.evict(0x81000020)).toBe(true);
      expect(await tpm.evict(0x81000020)).toBe(false);
      expect(await tpm.loadPersistent(0x81000020)).toBeNull();
    } finally {
      await tpm.flush(key);
    }
  });

  it('signs digests that verify with node:crypto (DER) and WebCrypto (raw r||s), for SHA-256 and SHA-384', async () => {
    const { key } = await tpm.createIdentityKey(srk);
    try {
      const msg = Buffer.from('device telemetry');
      const sig = await tpm.sign(key, sha256(msg));
      expect(sig.hash).toBe('sha256');
      expect(verify('sha256', msg, { key: key.spki, format: 'der', type: 'spki' }, sig.der)).toBe(true);
      expect(verify('sha256', Buffer.from('other'), { key: key.spki, format: 'der', type: 'spki' }, sig.der)).toBe(false);
      const wk = await webcrypto.subtle.importKey('spki', key.spki, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['verify']);
      expect(sig.raw).toHaveLength(64);
      expect(await webcrypto.subtle.verify({ name: 'ECDSA', hash: 'SHA-256' }, wk, sig.raw, msg)).toBe(true);
      const s384 = await tpm.sign(key, createHash('sha384').update(msg).digest());
      expect(verify('sha384', msg, { key: key.spki, format: 'der', type: 'spki' }, s384.der)).toBe(true);
    } finally {
      await tpm.flush(key);
    }
  });

  it('serializes 50 concurrent signs, all correct', async () => {
    const { key } = await tpm.createIdentityKey(srk);
    try {
      const msgs = Array.from({ length: 50 }, (_, i) => Buffer.from(`message ${i}`));
      const sigs = await Promise.all(msgs.map((m) => tpm.sign(key, sha256(m))));
      const pub = createPublicKey({ key: key.spki, format: 'der', type: 'spki' });
      sigs.forEach((s, i) => expect(verify('sha256', msgs[i]!, pub, s.der)).toBe(true));
    } finally {
      await tpm.flush(key);
    }
  });

  it('certifies a key: TPM-generated, bound to the nonce and the key Name, signed by the AK', async () => {
    const ak = (await tpm.createAttestationKey(srk)).key;
    const { key } = await tpm.createIdentityKey(srk);
    try {
      const nonce = randomBytes(32);
      const att = await tpm.certify(key, ak, nonce);
      expect(att.parsed.magic).toBe(TPM_GENERATED_VALUE);
      expect(att.parsed.type).toBe('certify');
      expect(att.parsed.extraData.equals(nonce)).toBe(true);
      if (att.parsed.type !== 'certify') throw new Error('unreachable');
      expect(att.parsed.certified.name.equals(key.name)).toBe(true);
      expect(att.parsed.qualifiedSigner.length).toBeGreaterThan(2);
      expect(verifyTpmSignature(ak.public, att.attest, att.signature)).toBe(true);
      const tampered = Buffer.from(att.attest);
      tampered[tampered.length - 1]! ^= 1;
      expect(verifyTpmSignature(ak.public, tampered, att.signature)).toBe(false);
      expect(verifyTpmSignature(key.public, att.attest, att.signature)).toBe(false);
      // A restricted AK refuses to sign an external digest that could impersonate a TPMS_ATTEST.
      await expectCode(tpm.sign(ak, sha256(att.attest)), /^TPM_RC_/);
    } finally {
      await tpm.flush(key);
      await tpm.flush(ak);
    }
  });

  it('quotes PCRs: nonce, digest over the current values, AK signature', async () => {
    const ak = (await tpm.createAttestationKey(srk)).key;
    try {
      const nonce = randomBytes(20);
      const pcrs = [0, 1, 2, 3, 7];
      const att = await tpm.quote(ak, { bank: 'sha256', pcrs }, nonce);
      expect(att.parsed.type).toBe('quote');
      if (att.parsed.type !== 'quote') throw new Error('unreachable');
      expect(att.parsed.extraData.equals(nonce)).toBe(true);
      expect(att.parsed.quoted.pcrSelect).toEqual([{ hash: 'sha256', pcrs }]);
      const values = await tpm.pcrRead('sha256', pcrs);
      expect(att.parsed.quoted.pcrDigest.equals(quotePcrDigest('sha256', pcrs.map((p) => values.get(p)!)))).toBe(true);
      expect(verifyTpmSignature(ak.public, att.attest, att.signature)).toBe(true);
    } finally {
      await tpm.flush(ak);
    }
  });

  for (const kind of ['rsa', 'ecc'] as const) {
    it(`recovers a MakeCredential secret with the ${kind} EK (software MakeCredential → TPM ActivateCredential)`, async () => {
      const ak = (await tpm.createAttestationKey(srk)).key;
      const ek = await tpm.createEk(kind);
      try {
        const secret = randomBytes(32);
        const cred = makeCredential({ ekPublic: ek.public, objectName: ak.name, credential: secret });
        const recovered = await tpm.activateCredential(ak, ek, cred.credentialBlob, cred.encryptedSecret);
        expect(recovered.equals(secret)).toBe(true);
        // Bound to the AK's Name: the same blob for another object's Name fails the integrity check.
        const wrong = makeCredential({ ekPublic: ek.public, objectName: srk.name, credential: secret });
        await expectCode(tpm.activateCredential(ak, ek, wrong.credentialBlob, wrong.encryptedSecret), /^TPM_RC_/);
      } finally {
        await tpm.flush(ek);
        await tpm.flush(ak);
      }
    });
  }

  it('leaves nothing loaded in the TPM after close, including the kept EK policy session', async () => {
    const ak = (await tpm.createAttestationKey(srk)).key;
    const ek = await tpm.createEk('ecc');
    for (let i = 0; i < 3; i++) {
      const secret = randomBytes(32);
      const cred = makeCredential({ ekPublic: ek.public, objectName: ak.name, credential: secret });
      expect((await tpm.activateCredential(ak, ek, cred.credentialBlob, cred.encryptedSecret)).equals(secret)).toBe(true);
    }
    const bad = makeCredential({ ekPublic: ek.public, objectName: srk.name, credential: randomBytes(32) });
    await expectCode(tpm.activateCredential(ak, ek, bad.credentialBlob, bad.encryptedSecret), /^TPM_RC_/);
    const again = makeCredential({ ekPublic: ek.public, objectName: ak.name, credential: Buffer.alloc(32, 3) });
    expect((await tpm.activateCredential(ak, ek, again.credentialBlob, again.encryptedSecret)).equals(Buffer.alloc(32, 3))).toBe(true);
    await tpm.flush(ek);
    await tpm.flush(ak);
    await tpm.close();
    tpm = await NativeTpm.open(sw.tcti);
    // swtpm has no resource manager: anything the closed context left would be visible (and flushed) here.
    expect(await tpm.reclaimSlots()).toBe(0);
    srk = await tpm.ensureSrk();
  });

  it('refuses to activate a credential made for another TPM', async () => {
    const other = await startTpm();
    const otherTpm = await NativeTpm.open(other.tcti);
    try {
      const otherSrk = await otherTpm.ensureSrk();
      const otherAk = (await otherTpm.createAttestationKey(otherSrk)).key;
      const otherEk = await otherTpm.createEk('ecc');
      const ourEk = await tpm.createEk('ecc');
      // The fleet sealed a secret to OUR EK for an AK Name; the other TPM cannot open it even for its own AK.
      const cred = makeCredential({ ekPublic: ourEk.public, objectName: otherAk.name, credential: randomBytes(32) });
      await tpm.flush(ourEk);
      await expectCode(otherTpm.activateCredential(otherAk, otherEk, cred.credentialBlob, cred.encryptedSecret), /^TPM_RC_/);
    } finally {
      await otherTpm.close();
      await other.stop();
    }
  });

  it('reloads key blobs after reopening the context and after restarting the TPM', async () => {
    const { key, blobs } = await tpm.createIdentityKey(srk);
    await tpm.flush(key);
    await tpm.close();
    tpm = await NativeTpm.open(sw.tcti);
    srk = await tpm.ensureSrk();
    const reopened = await tpm.loadKey(srk, blobs);
    expect(reopened.spki.equals(key.spki)).toBe(true);
    await tpm.flush(reopened);
    await tpm.close();

    await sw.restart();
    tpm = await NativeTpm.open(sw.tcti);
    const srkAfter = await tpm.ensureSrk();
    expect(srkAfter.name.equals(srk.name)).toBe(true);
    srk = srkAfter;
    const restarted = await tpm.loadKey(srk, blobs);
    try {
      const sig = await tpm.sign(restarted, sha256('after restart'));
      expect(verify('sha256', Buffer.from('after restart'), { key: key.spki, format: 'der', type: 'spki' }, sig.der)).toBe(true);
    } finally {
      await tpm.flush(restarted);
    }
  });

  it('answers misuse with coded errors, never a crash', async () => {
    const { key, blobs } = await tpm.createIdentityKey(srk);
    await tpm.flush(key);
    await expectCode(tpm.sign(key, sha256('x')), 'TPM_UNKNOWN_HANDLE');
    await expectCode(tpm.sign({ ...key, handle: 0x7fff1234 }, sha256('x')), 'TPM_UNKNOWN_HANDLE');
    await expectCode(tpm.sign(srk, Buffer.alloc(7)), 'TPM_BAD_ARGUMENT');
    await expectCode(tpm.getRandom(0), 'TPM_BAD_ARGUMENT');
    await expectCode(tpm.getRandom(5000), 'TPM_BAD_ARGUMENT');
    await expectCode(tpm.pcrRead('sha256', [24]), 'TPM_BAD_ARGUMENT');
    await expectCode(tpm.certify(key, key, Buffer.alloc(65)), 'TPM_BAD_ARGUMENT');
    await expectCode(tpm.loadKey(srk, { private: Buffer.from([0, 4, 1, 2, 3, 4]), public: blobs.public }), /^(TPM_RC_|TPM_BAD_ARGUMENT)/);
    await expectCode(tpm.loadKey(srk, { private: blobs.private, public: Buffer.from([0, 1]) }), 'TPM_BAD_ARGUMENT');
    // The SRK slot holding a non-SRK object is refused, not silently used.
    const { key: notSrk } = await tpm.createIdentityKey(srk);
    await tpm.persist(notSrk, 0x81000030);
    await tpm.flush(notSrk);
    await expectCode(tpm.ensureSrk({ persistentHandle: 0x81000030 }), 'TPM_BAD_ARGUMENT');
    expect(await tpm.evict(0x81000030)).toBe(true);
    // A TPM that is not there.
    await expectCode(NativeTpm.open('swtpm:host=127.0.0.1,port=1'), 'TPM_UNREACHABLE');
    await expectCode(NativeTpm.open(''), 'TPM_BAD_ARGUMENT');
    // Closed contexts refuse work; close is idempotent.
    await tpm.close();
    await tpm.close();
    await expectCode(tpm.getRandom(8), 'TPM_CLOSED');
    await expectCode(tpm.sign(srk, sha256('x')), 'TPM_CLOSED');
    expect(() => tpm.tlsKey(srk)).toThrow(TpmError);
    tpm = await NativeTpm.open(sw.tcti);
    srk = await tpm.ensureSrk();
  });
});
