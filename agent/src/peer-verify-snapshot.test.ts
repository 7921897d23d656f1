import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../common/clock.js';
import { toPem } from '../../common/der.js';
import { createCa, type CaMaterial } from '../../broker-bridge/src/ca/ca-setup.js';
import { CrlSigner } from '../../broker-bridge/src/ca/crl.js';
import { CertificateIssuer } from '../../broker-bridge/src/ca/issuer.js';
import { deviceKey } from '../../broker-bridge/src/ca/test-util.js';
import { SNAPSHOT_DIR, verifyFromSnapshot, writeSnapshot } from './peer-verify-snapshot.js';
import { runVerify } from './verify-cli.js';

const TD = 'fleet.example';
const T0 = Date.UTC(2026, 5, 1, 8, 0, 0);
const GRACE_SEC = 3_600;

/**
 * The snapshot `agent verify` answers from: written by the agent, read by the CLI, with every CRL
 * re-verified (real CA keys, real CRLs). Proves the answers for revoked, stale, expired, untrusted and
 * tampered input, and the time floor.
 */
describe('peer verification snapshot', () => {
  let dir: string;
  let clock: ManualClock;
  let ca: CaMaterial;
  let other: CaMaterial;
  let crls: CrlSigner;
  let good: string;
  let revoked: string;
  let revokedSerial: string;
  let foreign: string;

  const issue = async (c: CaMaterial, deviceId: string, lifetimeSec = 86_400) => {
    const r = await new CertificateIssuer({ backend: c.backend, issuingCertificate: c.issuingCertificatePem, clock, trustDomain: TD }).issue({
      deviceId,
      publicKeySpki: deviceKey().spki,
      lifetimeSec,
      backdateSec: 60,
      trustDomain: TD,
    });
    return { pem: toPem(r.certificateDer, 'CERTIFICATE'), serial: r.serialNumber };
  };
  const material = (crlDers: Buffer[], clockFloor?: number) => ({
    trustBundle: [ca.rootCertificatePem],
    caCertificates: [ca.issuingCertificatePem],
    clockFloor,
    graceSec: GRACE_SEC,
    crls: crlDers,
  });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'peer-verify-'));
    clock = new ManualClock(T0);
    const mk = (name: string) =>
      createCa({ outDir: join(dir, name), clock, trustDomain: TD, root: { commonName: `${name} Root` }, issuing: { commonName: `${name} Issuing` }, backend: { kind: 'file', keyPath: join(dir, `${name}-key.pem`) } });
    ca = await mk('fleet');
    other = await mk('other');
    crls = new CrlSigner({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock });
    good = (await issue(ca, 'dev-good')).pem;
    const r = await issue(ca, 'dev-revoked');
    revoked = r.pem;
    revokedSerial = r.serial;
    foreign = (await issue(other, 'dev-foreign')).pem;
    const crl = await crls.sign({ crlNumber: 5, nextUpdateSec: 3_600, revoked: [{ serialNumber: revokedSerial, revokedAt: new Date(T0 - 1_000), reason: 'keyCompromise' }] });
    await writeSnapshot(dir, material([crl.crlDer]));
  });
  afterAll(async () => {
    await ca?.backend.close();
    await other?.backend.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('answers OK, REVOKED and CHAIN_UNTRUSTED from a fresh CRL', async () => {
    await expect(verifyFromSnapshot(dir, good, { systemNow: T0 })).resolves.toMatchObject({ valid: true, code: 'OK', crlNumber: '5' });
    const r = await verifyFromSnapshot(dir, revoked, { systemNow: T0 });
    expect(r).toMatchObject({ valid: false, code: 'REVOKED' });
    expect(r.reason).toContain('keyCompromise');
    await expect(verifyFromSnapshot(dir, foreign, { systemNow: T0 })).resolves.toMatchObject({ valid: false, code: 'CHAIN_UNTRUSTED' });
  });

  it('says CRL_STALE past nextUpdate plus grace, and REVOKED stays REVOKED', async () => {
    const past = T0 + 3_600_000 + GRACE_SEC * 1000 + 1_000;
    await expect(verifyFromSnapshot(dir, good, { systemNow: past })).resolves.toMatchObject({ valid: false, code: 'CRL_STALE' });
    await expect(verifyFromSnapshot(dir, revoked, { systemNow: past })).resolves.toMatchObject({ code: 'REVOKED' });
    // Within the grace it is still fresh.
    await expect(verifyFromSnapshot(dir, good, { systemNow: T0 + 3_600_000 + 1_000 })).resolves.toMatchObject({ code: 'OK' });
  });

  it('judges time by the clock floor when the system clock is behind it', async () => {
    const sub = join(dir, 'floor');
    const crl = await crls.sign({ crlNumber: 6, nextUpdateSec: 3_600, revoked: [] });
    // Floor two days ahead of the system clock: the one-day certificate is expired by then.
    await writeSnapshot(sub, material([crl.crlDer], T0 + 2 * 86_400_000));
    const r = await verifyFromSnapshot(sub, good, { systemNow: T0 });
    expect(r.judgedAt).toBe(T0 + 2 * 86_400_000);
    expect(r.code).toBe('CERT_EXPIRED');
  });

  it('refuses a tampered CRL file instead of trusting it', async () => {
    const sub = join(dir, 'tampered');
    const crl = await crls.sign({ crlNumber: 7, nextUpdateSec: 3_600, revoked: [{ serialNumber: revokedSerial, revokedAt: new Date(T0 - 1_000) }] });
    await writeSnapshot(sub, material([crl.crlDer]));
    const file = readdirSync(join(sub, SNAPSHOT_DIR)).find((f) => f.endsWith('.der'))!;
    const der = readFileSync(join(sub, SNAPSHOT_DIR, file));
    der.writeUInt8(der.readUInt8(der.length - 5) ^ 0x01, der.length - 5); // inside the signature
    writeFileSync(join(sub, SNAPSHOT_DIR, file), der);
    await expect(verifyFromSnapshot(sub, good, { systemNow: T0 })).rejects.toMatchObject({ code: 'AGENT_VERIFY_SNAPSHOT_INVALID' });
  });

  it('keeps only the CRL files the state names, and answers CRL_MISSING before any CRL', async () => {
    const sub = join(dir, 'rewrite');
    const c1 = await crls.sign({ crlNumber: 8, nextUpdateSec: 3_600, revoked: [] });
    const c2 = await crls.sign({ crlNumber: 9, nextUpdateSec: 3_600, revoked: [] });
    await writeSnapshot(sub, material([c1.crlDer]));
    await writeSnapshot(sub, material([c2.crlDer]));
    expect(readdirSync(join(sub, SNAPSHOT_DIR)).filter((f) => f.endsWith('.der'))).toHaveLength(1);
    await expect(verifyFromSnapshot(sub, good, { systemNow: T0 })).resolves.toMatchObject({ crlNumber: '9', code: 'OK' });
    const none = join(dir, 'none');
    await writeSnapshot(none, material([]));
    await expect(verifyFromSnapshot(none, good, { systemNow: T0 })).resolves.toMatchObject({ code: 'CRL_MISSING' });
    await expect(verifyFromSnapshot(join(dir, 'absent'), good, { systemNow: T0 })).rejects.toMatchObject({ code: 'AGENT_VERIFY_NO_SNAPSHOT' });
    writeFileSync(join(none, SNAPSHOT_DIR, 'state.json'), '{"v":2}');
    await expect(verifyFromSnapshot(none, good, { systemNow: T0 })).rejects.toMatchObject({ code: 'AGENT_VERIFY_SNAPSHOT_INVALID' });
  });

  it('the CLI prints the code and exits 0 / 1 / 2 / 3', async () => {
    writeFileSync(join(dir, 'good.pem'), good);
    writeFileSync(join(dir, 'revoked.pem'), revoked);
    writeFileSync(join(dir, 'junk.pem'), 'not a certificate');
    const call = async (args: string[]) => {
      const out: string[] = [];
      const err: string[] = [];
      const code = await runVerify(args, { out: (l) => out.push(l), err: (l) => err.push(l), now: () => T0 });
      return { code, out: out.join('\n'), err: err.join('\n') };
    };
    expect(await call([join(dir, 'good.pem'), '--data', dir])).toMatchObject({ code: 0, out: expect.stringMatching(/^OK: /) });
    const r = await call([join(dir, 'revoked.pem'), '--data', dir, '--json']);
    expect(r.code).toBe(1);
    expect(JSON.parse(r.out)).toMatchObject({ valid: false, code: 'REVOKED', crlNumber: '5' });
    expect(await call([join(dir, 'junk.pem'), '--data', dir])).toMatchObject({ code: 2, err: expect.stringMatching(/holds no PEM certificate/) });
    expect(await call(['--data', dir])).toMatchObject({ code: 2, err: expect.stringMatching(/usage/) });
    expect(await call([join(dir, 'good.pem'), '--data', dir, '--bogus'])).toMatchObject({ code: 2 });
    expect(await call([join(dir, 'good.pem'), '--data', join(dir, 'absent')])).toMatchObject({ code: 3, err: expect.stringMatching(/AGENT_VERIFY_NO_SNAPSHOT/) });
  });
});
