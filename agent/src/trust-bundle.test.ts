import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { KeyObject, createPrivateKey, sign as cryptoSign, webcrypto } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueServiceCertificate } from '../../broker-bridge/src/broker/service-cert.js';
import type { CaMaterial } from '../../broker-bridge/src/ca/ca-setup.js';
import { testFleetCa } from '../../broker-bridge/src/trust/test-util.js';
import { TrustBundleSigner, signTrustBundle } from '../../broker-bridge/src/trust/trust-bundle-signer.js';
import { ManualClock } from '../../common/clock.js';
import { TRUST_BUNDLE_MAX_BYTES } from '../../common/protocol/trust-bundle.js';
import { acceptTrustBundle, type CurrentTrustBundle, type TrustBundleRejectCode, type TrustBundleVerdict } from './trust-bundle.js';

/**
 * acceptTrustBundle against real CAs made by the fleet's own CA set-up (root + issuing CA, key file
 * backend) and messages signed by the fleet's TrustBundleSigner / signTrustBundle. The forger is a
 * second, unrelated CA made the same way. Each refusal is built valid in every respect but the one
 * its test names, and asserts that check's code.
 */
const T0 = Date.UTC(2026, 3, 1, 12);
const HOUR = 3_600_000;

describe('acceptTrustBundle', () => {
  const clock = new ManualClock(T0);
  let dir: string;
  let fleet: CaMaterial;
  let forger: CaMaterial;
  let next: CaMaterial; // the fleet's next root (rollover)
  let shortLived: CaMaterial; // issuing CA valid for one hour from T0
  const open: CaMaterial[] = [];

  const ca = async (name: string, issuingLifetimeSec?: number): Promise<CaMaterial> => {
    const m = await testFleetCa(dir, name, clock, issuingLifetimeSec ? { issuingLifetimeSec } : {});
    open.push(m);
    return m;
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'trust-bundle-test-'));
    [fleet, forger, next, shortLived] = await Promise.all([ca('fleet'), ca('forger'), ca('next'), ca('short', 3600)]);
  });
  afterAll(async () => {
    for (const m of open) await m.backend.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** A message signed by `by`'s issuing CA (signer chain: that certificate alone). */
  const signed = (by: CaMaterial, roots: string[], version: number, extra?: { signerChain?: string[]; issuedAt?: number }) =>
    signTrustBundle({ backend: by.backend, signerChain: extra?.signerChain ?? [by.issuingCertificatePem], roots, version, issuedAt: extra?.issuedAt ?? clock.now() });
  const trusting = (...roots: string[]): CurrentTrustBundle => ({ roots, version: undefined });
  const refused = (v: TrustBundleVerdict, code: TrustBundleRejectCode) => {
    expect(v).toMatchObject({ accepted: false, code });
    expect((v as { reason: string }).reason.length).toBeGreaterThan(0);
  };
  const edit = (payload: Buffer, fn: (m: Record<string, unknown>) => void): Buffer => {
    const m = JSON.parse(payload.toString()) as Record<string, unknown>;
    fn(m);
    return Buffer.from(JSON.stringify(m));
  };

  it('accepts a bundle from the fleet signer that chains to a held root, whatever version the agent held', async () => {
    const signer = new TrustBundleSigner({ backend: fleet.backend, signerChain: [fleet.issuingCertificatePem], stateFile: join(dir, 'accept-state.json'), clock });
    const payload = await signer.message([fleet.rootCertificatePem]);
    const v = acceptTrustBundle(payload, trusting(fleet.rootCertificatePem), T0);
    expect(v).toEqual({ accepted: true, roots: [fleet.rootCertificatePem], version: 1, issuedAt: T0 });
    const newer = await signed(fleet, [fleet.rootCertificatePem, next.rootCertificatePem], 5);
    expect(acceptTrustBundle(newer, { roots: [fleet.rootCertificatePem], version: 4 }, T0)).toMatchObject({ accepted: true, version: 5 });
  });

  it('the same and an older version are TRUST_BUNDLE_OLDER (no news), even when otherwise valid', async () => {
    const v3 = await signed(fleet, [fleet.rootCertificatePem], 3);
    refused(acceptTrustBundle(v3, { roots: [fleet.rootCertificatePem], version: 3 }, T0), 'TRUST_BUNDLE_OLDER');
    refused(acceptTrustBundle(v3, { roots: [fleet.rootCertificatePem], version: 4 }, T0), 'TRUST_BUNDLE_OLDER');
    expect(acceptTrustBundle(v3, { roots: [fleet.rootCertificatePem], version: 2 }, T0)).toMatchObject({ accepted: true, version: 3 });
  });

  describe('forgeries are TRUST_BUNDLE_SIGNER_UNTRUSTED', () => {
    it('signed by an unrelated issuing CA, over the fleet roots', async () => {
      refused(acceptTrustBundle(await signed(forger, [fleet.rootCertificatePem], 9), trusting(fleet.rootCertificatePem), T0), 'TRUST_BUNDLE_SIGNER_UNTRUSTED');
    });

    it('signed by an unrelated CA with its whole chain, putting its own root into the new bundle', async () => {
      const payload = await signed(forger, [forger.rootCertificatePem, fleet.rootCertificatePem], 9, {
        signerChain: [forger.issuingCertificatePem, forger.rootCertificatePem],
      });
      refused(acceptTrustBundle(payload, trusting(fleet.rootCertificatePem), T0), 'TRUST_BUNDLE_SIGNER_UNTRUSTED');
      // The same message is fine for someone who already trusts the forger's root: the anchor decides.
      expect(acceptTrustBundle(payload, trusting(forger.rootCertificatePem), T0)).toMatchObject({ accepted: true });
    });

    it('signed by a self-signed CA that lists itself among the new roots', async () => {
      const root = await selfSignedCa('Forged Root');
      const payload = await signTrustBundle({ backend: root.backend, signerChain: [root.pem], roots: [root.pem, fleet.rootCertificatePem], version: 9, issuedAt: T0 });
      refused(acceptTrustBundle(payload, trusting(fleet.rootCertificatePem), T0), 'TRUST_BUNDLE_SIGNER_UNTRUSTED');
    });

    it('signed by a device key whose certificate the fleet CA issued (not a CA)', async () => {
      const dev = await issueServiceCertificate({ issuingCertPem: fleet.issuingCertificatePem, backend: fleet.backend, commonName: 'dev-1', usage: 'client', clock });
      const backend = softwareBackend(createPrivateKey(dev.keyPem));
      const payload = await signTrustBundle({ backend, signerChain: [dev.certPem, fleet.issuingCertificatePem], roots: [fleet.rootCertificatePem], version: 9, issuedAt: T0 });
      refused(acceptTrustBundle(payload, trusting(fleet.rootCertificatePem), T0), 'TRUST_BUNDLE_SIGNER_UNTRUSTED');
    });

    it('a valid message with the real signer chain but no held root to reach', async () => {
      refused(acceptTrustBundle(await signed(fleet, [fleet.rootCertificatePem], 2), trusting(next.rootCertificatePem), T0), 'TRUST_BUNDLE_SIGNER_UNTRUSTED');
    });
  });

  describe('anything changed after signing is TRUST_BUNDLE_SIGNATURE_INVALID', () => {
    it('roots swapped (for other valid CA certificates), reordered, version or issuedAt changed', async () => {
      const good = await signed(fleet, [fleet.rootCertificatePem, next.rootCertificatePem], 2);
      const current = trusting(fleet.rootCertificatePem);
      expect(acceptTrustBundle(good, current, T0).accepted).toBe(true);
      for (const tamper of [
        (m: Record<string, unknown>) => (m['roots'] = [fleet.rootCertificatePem, forger.rootCertificatePem]),
        (m: Record<string, unknown>) => (m['roots'] = [next.rootCertificatePem, fleet.rootCertificatePem]),
        (m: Record<string, unknown>) => (m['roots'] = [forger.rootCertificatePem]),
        (m: Record<string, unknown>) => (m['version'] = 3),
        (m: Record<string, unknown>) => (m['issuedAt'] = T0 + 1),
      ]) {
        refused(acceptTrustBundle(edit(good, tamper), current, T0), 'TRUST_BUNDLE_SIGNATURE_INVALID');
      }
    });

    it('a signature by another trusted CA key than the one signer[0] names', async () => {
      // signer[0] says "fleet issuing CA", the signature is the short-lived CA's (also trusted here).
      const byOther = await signTrustBundle({ backend: shortLived.backend, signerChain: [fleet.issuingCertificatePem], roots: [fleet.rootCertificatePem], version: 2, issuedAt: T0 });
      refused(acceptTrustBundle(byOther, trusting(fleet.rootCertificatePem, shortLived.rootCertificatePem), T0), 'TRUST_BUNDLE_SIGNATURE_INVALID');
    });
  });

  it('a signer outside its validity at the judged time: TRUST_BUNDLE_SIGNER_EXPIRED / _NOT_YET_VALID', async () => {
    const payload = await signed(shortLived, [shortLived.rootCertificatePem], 2);
    const current = trusting(shortLived.rootCertificatePem);
    expect(acceptTrustBundle(payload, current, T0 + HOUR / 2).accepted).toBe(true);
    refused(acceptTrustBundle(payload, current, T0 + 2 * HOUR), 'TRUST_BUNDLE_SIGNER_EXPIRED');
    refused(acceptTrustBundle(payload, current, T0 - HOUR), 'TRUST_BUNDLE_SIGNER_NOT_YET_VALID');
  });

  it('a root rollover is accepted step by step, and only in order', async () => {
    const state = join(dir, 'rollover-state.json');
    const signerFor = (m: CaMaterial) => new TrustBundleSigner({ backend: m.backend, signerChain: [m.issuingCertificatePem], stateFile: state, clock });
    const oldRoot = fleet.rootCertificatePem;
    const newRoot = next.rootCertificatePem;
    // v1: the old root, as devices got it at enrollment.
    const v1 = await signerFor(fleet).message([oldRoot]);
    // v2: old + new root, still signed by the old issuing CA (under the old root).
    const v2 = await signerFor(fleet).message([oldRoot, newRoot]);
    // v3: the new root only, signed by the new issuing CA (under the new root). A restarted bridge
    // with the new CA configured: the version still comes from the state file.
    const v3 = await signerFor(next).message([newRoot]);

    let held: CurrentTrustBundle = { roots: [oldRoot], version: undefined };
    const step = (payload: Buffer, version: number, roots: string[]) => {
      const v = acceptTrustBundle(payload, held, T0);
      expect(v).toMatchObject({ accepted: true, version, roots });
      if (v.accepted) held = { roots: v.roots, version: v.version };
    };
    // A device that missed v2 cannot jump to v3: nothing it trusts signed it.
    refused(acceptTrustBundle(v3, held, T0), 'TRUST_BUNDLE_SIGNER_UNTRUSTED');
    step(v1, 1, [oldRoot]);
    step(v2, 2, [oldRoot, newRoot]);
    step(v3, 3, [newRoot]);
    // Replays are old news; the retired root can no longer sign anything.
    refused(acceptTrustBundle(v2, held, T0), 'TRUST_BUNDLE_OLDER');
    refused(acceptTrustBundle(await signed(fleet, [oldRoot], 4), held, T0), 'TRUST_BUNDLE_SIGNER_UNTRUSTED');
  });

  it('a path through an intermediate CA, within and beyond pathLenConstraint', async () => {
    const pki = await threeLevelPki(1);
    const payload = await signTrustBundle({ backend: pki.issuing.backend, signerChain: [pki.issuing.pem, pki.intermediate.pem], roots: [pki.root.pem], version: 2, issuedAt: T0 });
    expect(acceptTrustBundle(payload, trusting(pki.root.pem), T0)).toMatchObject({ accepted: true, version: 2 });
    // Without the intermediate the path does not reach the root.
    const short = await signTrustBundle({ backend: pki.issuing.backend, signerChain: [pki.issuing.pem], roots: [pki.root.pem], version: 2, issuedAt: T0 });
    refused(acceptTrustBundle(short, trusting(pki.root.pem), T0), 'TRUST_BUNDLE_SIGNER_UNTRUSTED');
    // A root with pathLen 0 allows no intermediate CA below it.
    const tight = await threeLevelPki(0);
    const beyond = await signTrustBundle({ backend: tight.issuing.backend, signerChain: [tight.issuing.pem, tight.intermediate.pem], roots: [tight.root.pem], version: 2, issuedAt: T0 });
    refused(acceptTrustBundle(beyond, trusting(tight.root.pem), T0), 'TRUST_BUNDLE_SIGNER_UNTRUSTED');
  });

  it('roots that are not CA certificates, or listed twice: TRUST_BUNDLE_ROOT_INVALID', async () => {
    const leaf = await issueServiceCertificate({ issuingCertPem: fleet.issuingCertificatePem, backend: fleet.backend, commonName: 'not-a-root', usage: 'client', clock });
    const current = trusting(fleet.rootCertificatePem);
    refused(acceptTrustBundle(await signed(fleet, [fleet.rootCertificatePem, leaf.certPem], 2), current, T0), 'TRUST_BUNDLE_ROOT_INVALID');
    refused(acceptTrustBundle(await signed(fleet, [fleet.rootCertificatePem, fleet.rootCertificatePem], 2), current, T0), 'TRUST_BUNDLE_ROOT_INVALID');
  });

  it('malformed payloads are TRUST_BUNDLE_MALFORMED', async () => {
    const good = await signed(fleet, [fleet.rootCertificatePem], 2);
    const current = trusting(fleet.rootCertificatePem);
    const bad: Buffer[] = [
      Buffer.from('not json'),
      Buffer.from('{"v":1,"roots":[]}'), // the old unsigned form
      Buffer.alloc(TRUST_BUNDLE_MAX_BYTES + 1, 0x20),
      edit(good, (m) => (m['extra'] = true)),
      edit(good, (m) => (m['v'] = 2)),
      edit(good, (m) => (m['version'] = 0)),
      edit(good, (m) => (m['version'] = 2 ** 53)),
      edit(good, (m) => (m['signature'] = 'not base64!')),
      edit(good, (m) => (m['signer'] = [])),
      edit(good, (m) => (m['roots'] = Array(9).fill(fleet.rootCertificatePem))),
    ];
    for (const p of bad) refused(acceptTrustBundle(p, current, T0), 'TRUST_BUNDLE_MALFORMED');
  });

  it('never throws on mutated input, and accepts a mutation only if it means the same signed content', async () => {
    const good = await signed(fleet, [fleet.rootCertificatePem], 2);
    const current = trusting(fleet.rootCertificatePem);
    const codes = new Set<string>();
    let seed = 7;
    const rand = (n: number) => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) % n);
    for (let i = 0; i < 500; i++) {
      const m = Buffer.from(good);
      for (let k = 1 + rand(3); k > 0; k--) m[rand(m.length)] = rand(256);
      const v = acceptTrustBundle(m, current, T0);
      if (v.accepted) {
        expect(v.version).toBe(2);
        expect(v.roots.map((r) => new x509.X509Certificate(r).rawData)).toEqual([new x509.X509Certificate(fleet.rootCertificatePem).rawData]);
      } else codes.add(v.code);
    }
    expect([...codes].every((c) => c.startsWith('TRUST_BUNDLE_'))).toBe(true);
    expect(codes.has('TRUST_BUNDLE_MALFORMED')).toBe(true);
  });
});

// --- helpers -------------------------------------------------------------------------------------

x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);
const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

function softwareBackend(privateKey: KeyObject) {
  return { sign: async (req: { tbs: Buffer }) => ({ signature: cryptoSign('sha256', req.tbs, privateKey) }) };
}

interface TestCa {
  readonly pem: string;
  readonly cert: x509.X509Certificate;
  readonly keys: webcrypto.CryptoKeyPair;
  readonly backend: ReturnType<typeof softwareBackend>;
}

async function testCa(name: string, issuer: TestCa | undefined, pathLen: number): Promise<TestCa> {
  const keys = (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '0' + Math.floor(Math.random() * 1e9).toString(16),
    subject: `CN=${name}`,
    issuer: issuer ? issuer.cert.subject : `CN=${name}`,
    notBefore: new Date(T0 - HOUR),
    notAfter: new Date(T0 + 365 * 24 * HOUR),
    signingAlgorithm: ALG,
    publicKey: keys.publicKey,
    signingKey: (issuer ?? { keys }).keys.privateKey,
    extensions: [new x509.BasicConstraintsExtension(true, pathLen, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true)],
  });
  return { pem: cert.toString('pem'), cert, keys, backend: softwareBackend(KeyObject.from(keys.privateKey)) };
}

function selfSignedCa(name: string): Promise<TestCa> {
  return testCa(name, undefined, 1);
}

/** root (pathLen `rootPathLen`) → intermediate (pathLen 0) → issuing CA (pathLen 0). */
async function threeLevelPki(rootPathLen: number): Promise<{ root: TestCa; intermediate: TestCa; issuing: TestCa }> {
  const root = await testCa('Three Root', undefined, rootPathLen);
  const intermediate = await testCa('Three Intermediate', root, 0);
  const issuing = await testCa('Three Issuing', intermediate, 0);
  return { root, intermediate, issuing };
}
