import { X509Certificate, verify } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../../common/clock.js';
import { decodeTrustBundle, trustBundleToBeSigned, type TrustBundleMessage } from '../../../common/protocol/trust-bundle.js';
import { startSoftHsm, type SoftHsm } from '../../../test/harness/softhsm.js';
import { issueServiceCertificate } from '../broker/service-cert.js';
import type { CaBackend } from '../ca/ca-backend.js';
import { createCa, type CaMaterial } from '../ca/ca-setup.js';
import { expectCode } from '../ca/test-util.js';
import { testFleetCa } from './test-util.js';
import { TrustBundleSigner, type TrustBundleSignerOptions } from './trust-bundle-signer.js';

/**
 * TrustBundleSigner with real CAs from the fleet's CA set-up (key file and PKCS#11 on SoftHSM2). Each
 * signature is checked independently: node:crypto over the protocol's signed bytes with the key of the
 * signer certificate in the message.
 */
const TD = 'signer.test';
const T0 = Date.UTC(2026, 3, 1, 12);

/** The backend, counting its signatures. */
function counting(b: CaBackend): CaBackend & { signatures: number } {
  const c = {
    kind: b.kind,
    algorithm: b.algorithm,
    signatures: 0,
    publicKey: () => b.publicKey(),
    sign: (req: Parameters<CaBackend['sign']>[0]) => {
      c.signatures++;
      return b.sign(req);
    },
    close: () => b.close(),
  };
  return c;
}

/** Decodes and verifies a message independently of the agent's code; returns it. */
function verified(payload: Buffer): TrustBundleMessage {
  const m = decodeTrustBundle(payload);
  const tbs = trustBundleToBeSigned(m.version, m.issuedAt, m.roots.map((p) => new X509Certificate(p).raw));
  expect(verify('sha256', tbs, new X509Certificate(m.signer[0]!).publicKey, m.signature)).toBe(true);
  return m;
}

describe('TrustBundleSigner', () => {
  const clock = new ManualClock(T0);
  let dir: string;
  let fleet: CaMaterial;
  let other: CaMaterial;
  const cas: CaMaterial[] = [];
  let n = 0;
  const stateFile = () => join(dir, `state-${++n}.json`);

  const ca = async (name: string, extra: { issuingLifetimeSec?: number } = {}): Promise<CaMaterial> => {
    const m = await testFleetCa(dir, name, clock, extra);
    cas.push(m);
    return m;
  };
  const signerOf = (m: CaMaterial, o: Partial<TrustBundleSignerOptions> = {}) =>
    new TrustBundleSigner({ backend: m.backend, signerChain: [m.issuingCertificatePem], stateFile: stateFile(), clock, ...o });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'trust-signer-test-'));
    [fleet, other] = await Promise.all([ca('fleet'), ca('other')]);
  });
  afterAll(async () => {
    for (const m of cas) await m.backend.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('same roots: the stored message again, byte for byte, without signing, also after a restart', async () => {
    const backend = counting(fleet.backend);
    const file = stateFile();
    const first = new TrustBundleSigner({ backend, signerChain: [fleet.issuingCertificatePem], stateFile: file, clock });
    const m1 = await first.message([fleet.rootCertificatePem]);
    expect(verified(m1)).toMatchObject({ v: 1, version: 1, issuedAt: T0, roots: [fleet.rootCertificatePem], signer: [fleet.issuingCertificatePem] });
    expect(first.version).toBe(1);
    clock.advance(60_000);
    // The same roots in another PEM layout are the same roots (compared by DER).
    expect((await first.message([fleet.rootCertificatePem.replace(/\n/g, '\r\n')])).equals(m1)).toBe(true);
    const restarted = new TrustBundleSigner({ backend, signerChain: [fleet.issuingCertificatePem], stateFile: file, clock });
    expect((await restarted.message([fleet.rootCertificatePem])).equals(m1)).toBe(true);
    expect(backend.signatures).toBe(1);
    expect(JSON.parse(await readFile(file, 'utf8'))).toEqual({ v: 1, version: 1, message: m1.toString() });
  });

  it('changed roots: version + 1, persisted, and never reused (going back to earlier roots is a new version)', async () => {
    const file = stateFile();
    const make = () => new TrustBundleSigner({ backend: fleet.backend, signerChain: [fleet.issuingCertificatePem], stateFile: file, clock });
    const a = [fleet.rootCertificatePem];
    const ab = [fleet.rootCertificatePem, other.rootCertificatePem];
    expect(verified(await make().message(a)).version).toBe(1);
    expect(verified(await make().message(ab)).version).toBe(2);
    expect(verified(await make().message(ab)).version).toBe(2);
    expect(JSON.parse(await readFile(file, 'utf8')).version).toBe(2);
    expect(verified(await make().message(a))).toMatchObject({ version: 3, roots: a });
    // Reordered roots are other signed content: a new version.
    const s = make();
    await s.message([other.rootCertificatePem, fleet.rootCertificatePem]);
    expect(s.version).toBe(4);
  });

  it('same roots with a renewed signer chain: re-signed under the same version', async () => {
    const file = stateFile();
    const roots = [fleet.rootCertificatePem, other.rootCertificatePem];
    const byFleet = verified(await new TrustBundleSigner({ backend: fleet.backend, signerChain: [fleet.issuingCertificatePem], stateFile: file, clock }).message(roots));
    const byOther = verified(await new TrustBundleSigner({ backend: other.backend, signerChain: [other.issuingCertificatePem], stateFile: file, clock }).message(roots));
    expect(byFleet.version).toBe(1);
    expect(byOther).toMatchObject({ version: 1, signer: [other.issuingCertificatePem] });
  });

  it('concurrent calls are serialized: one version, one signature', async () => {
    const backend = counting(fleet.backend);
    const s = new TrustBundleSigner({ backend, signerChain: [fleet.issuingCertificatePem], stateFile: stateFile(), clock });
    const all = await Promise.all(Array.from({ length: 5 }, () => s.message([fleet.rootCertificatePem])));
    expect(all.every((m) => m.equals(all[0]!))).toBe(true);
    expect(backend.signatures).toBe(1);
  });

  it('refuses inconsistent configuration with TRUST_BUNDLE_CONFIG_INVALID', async () => {
    const invalid = (p: Promise<unknown>) => expectCode(p, 'TRUST_BUNDLE_CONFIG_INVALID');
    // signer[0] is not the backend's certificate.
    await invalid(signerOf(fleet, { signerChain: [other.issuingCertificatePem] }).message([other.rootCertificatePem]));
    // The signer does not reach any root it signs (devices adopting it could never verify the next one).
    await invalid(signerOf(fleet).message([other.rootCertificatePem]));
    // Roots: not a CA, listed twice, too many, unreadable.
    const leaf = await issueServiceCertificate({ issuingCertPem: fleet.issuingCertificatePem, backend: fleet.backend, commonName: 'leaf', usage: 'client', clock });
    await invalid(signerOf(fleet).message([fleet.rootCertificatePem, leaf.certPem]));
    await invalid(signerOf(fleet).message([fleet.rootCertificatePem, '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n']));
    await invalid(signerOf(fleet).message([fleet.rootCertificatePem, fleet.rootCertificatePem]));
    await invalid(signerOf(fleet).message(Array(9).fill(fleet.rootCertificatePem)));
    await invalid(signerOf(fleet).message([]));
  });

  it('a signer chain outside its validity now: TRUST_BUNDLE_SIGNER_NOT_VALID', async () => {
    const short = await ca('short', { issuingLifetimeSec: 3600 });
    const later = new ManualClock(T0 + 2 * 3_600_000);
    await expectCode(signerOf(short, { clock: later }).message([short.rootCertificatePem]), 'TRUST_BUNDLE_SIGNER_NOT_VALID');
    await expectCode(signerOf(short, { clock: new ManualClock(T0 - 1000) }).message([short.rootCertificatePem]), 'TRUST_BUNDLE_SIGNER_NOT_VALID');
  });

  it('an unreadable state file is TRUST_BUNDLE_STATE_INVALID and left as it is (never a silent reset to 1)', async () => {
    for (const content of ['not json', JSON.stringify({ v: 1, version: 2, message: '{}' }), JSON.stringify({ v: 1, version: 2, message: (await signerOf(fleet).message([fleet.rootCertificatePem])).toString() })]) {
      const file = stateFile();
      await writeFile(file, content);
      await expectCode(new TrustBundleSigner({ backend: fleet.backend, signerChain: [fleet.issuingCertificatePem], stateFile: file, clock }).message([fleet.rootCertificatePem]), 'TRUST_BUNDLE_STATE_INVALID');
      expect(await readFile(file, 'utf8')).toBe(content);
    }
  });

  it('a state that cannot be written: TRUST_BUNDLE_STATE_WRITE_FAILED, and nothing to publish', async () => {
    const s = signerOf(fleet, { stateFile: join(dir, 'missing-dir', 'state.json') });
    await expectCode(s.message([fleet.rootCertificatePem]), 'TRUST_BUNDLE_STATE_WRITE_FAILED');
    expect(s.version).toBeUndefined();
  });

  it('a failing CA backend: TRUST_BUNDLE_SIGN_FAILED with the backend error as cause', async () => {
    const closed = await ca('closed');
    await closed.backend.close();
    const err = await signerOf(closed).message([closed.rootCertificatePem]).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'TRUST_BUNDLE_SIGN_FAILED', cause: { code: 'CA_BACKEND_FAILED' } });
  });
});

describe('TrustBundleSigner with a PKCS#11 CA key (SoftHSM2)', () => {
  let hsm: SoftHsm;
  let dir: string;
  let ca: CaMaterial | undefined;

  beforeAll(async () => {
    hsm = await startSoftHsm({ tokenLabel: 'trust-bundle' });
    process.env['SOFTHSM2_CONF'] = hsm.env.SOFTHSM2_CONF; // before the module's C_Initialize
    dir = await mkdtemp(join(tmpdir(), 'trust-signer-p11-'));
  });
  afterAll(async () => {
    await ca?.backend.close();
    await rm(dir, { recursive: true, force: true });
    await hsm?.stop();
  });

  it('signs through the token; the signature verifies and the version persists', async () => {
    const clock = new ManualClock(T0);
    ca = await createCa({
      outDir: join(dir, 'ca'),
      clock,
      trustDomain: TD,
      root: { commonName: 'HSM root' },
      issuing: { commonName: 'HSM issuing CA' },
      backend: { kind: 'pkcs11', modulePath: hsm.modulePath, tokenLabel: hsm.tokenLabel, pin: hsm.pin, keyLabel: 'trust-bundle-ca' },
    });
    expect(ca.backend.kind).toBe('pkcs11');
    const file = join(dir, 'state.json');
    const make = () => new TrustBundleSigner({ backend: ca!.backend, signerChain: [ca!.issuingCertificatePem], stateFile: file, clock });
    const m1 = await make().message([ca.rootCertificatePem]);
    expect(verified(m1)).toMatchObject({ version: 1, signer: [ca.issuingCertificatePem] });
    expect((await make().message([ca.rootCertificatePem])).equals(m1)).toBe(true);
  });
});
