import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyEkCertificate } from '../../native/lib/ek-certificate.js';
import { opensslVerify } from '../../native/lib/ek-test-pki.js';
import { loadBinding } from '../../native/lib/binding.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import { toTpmError } from '../../native/lib/tpm-error.js';
import { EK_CERT_NV, ECC_CURVE, HIERARCHY } from '../../native/lib/wire/constants.js';
import { ekEccTemplate, matchesTemplate } from '../../native/lib/wire/templates.js';
import { pidAlive } from '../../test/harness/index.js';
import { TpmFactory, type ManufacturedTpm } from './factory.js';
import { SwtpmProcess } from './swtpm.js';

const run = promisify(execFile);

/**
 * The simulator's TPM factory against real swtpm processes: the EK certificate lands where vendors put
 * it (read back by NativeTpm and, from outside, by tpm2-tools), chains to the factory's CA (our
 * verifier and openssl), survives a restart, and is write-locked. Every TPM has its own EK.
 */
describe('TpmFactory (real swtpm)', () => {
  let dir: string;
  let factory: TpmFactory;
  let made: ManufacturedTpm[] = [];
  const running: SwtpmProcess[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tpm-factory-'));
    factory = await TpmFactory.create();
    made = await factory.manufactureMany(2, (i) => join(dir, 'tpm', String(i)), { concurrency: 2 });
    running.push(...made.map((m) => m.tpm));
  });
  afterAll(async () => {
    await Promise.all(running.map((t) => t.stop()));
    rmSync(dir, { recursive: true, force: true });
  });

  it('writes a TCG EK certificate for the ECC P-256 EK (template L-2) at 0x01c0000a, which NativeTpm reads back and re-derives', async () => {
    const [m] = made;
    const tpm = await NativeTpm.open(m!.tpm.tcti);
    try {
      expect(await tpm.readEkCertificate('ecc')).toEqual(m!.ekCertificateDer);
      expect(await tpm.readEkCertificate('rsa')).toBeNull();
      const ek = await tpm.createEk('ecc');
      await tpm.flush(ek);
      expect(ek.public.type === 'ecc' && ek.public.curveId).toBe(ECC_CURVE.NIST_P256);
      expect(matchesTemplate(ek.public, ekEccTemplate())).toBe(true);
      expect(createHash('sha256').update(ek.spki).digest('hex')).toBe(m!.ekPublicHash);
      const verified = verifyEkCertificate(m!.ekCertificateDer, factory.ekTrust(), Date.now(), { ekValidity: 'strict' });
      expect(verified.ekSpki).toEqual(ek.spki);
    } finally {
      await tpm.close();
    }
  });

  it('from outside: tpm2_nvread returns the same bytes, the index has the vendor attributes (write-locked), and openssl verifies the chain', async () => {
    const [m] = made;
    const tcti = `swtpm:host=127.0.0.1,port=${m!.tpm.port}`;
    const out = join(dir, 'ek.der');
    await run('tpm2_nvread', ['-T', tcti, '-o', out, `0x${EK_CERT_NV.ECC_P256.toString(16)}`]);
    expect(readFileSync(out)).toEqual(m!.ekCertificateDer);
    const { stdout } = await run('tpm2_nvreadpublic', ['-T', tcti, `0x${EK_CERT_NV.ECC_P256.toString(16)}`]);
    // What swtpm_setup --lock-nvram writes for its EK certificate indices.
    expect(stdout).toContain('friendly: ppwrite|writelocked|writedefine|ppread|ownerread|authread|no_da|written|platformcreate');
    expect(stdout).toContain(`size: ${m!.ekCertificateDer.length}`);
    expect(await opensslVerify(m!.ekCertificateDer, [factory.rootPem()], [factory.intermediatePem()])).toEqual({ ok: true, errors: [] });
  });

  it('two TPMs from one factory have different EKs, each certified', () => {
    const [a, b] = made;
    expect(a!.ekPublicHash).not.toBe(b!.ekPublicHash);
    expect(a!.ekCertificateDer).not.toEqual(b!.ekCertificateDer);
    for (const m of made) expect(() => verifyEkCertificate(m.ekCertificateDer, factory.ekTrust(), Date.now())).not.toThrow();
  });

  it("another factory's CA does not anchor these certificates (EK_UNTRUSTED)", async () => {
    const other = await TpmFactory.create({ name: 'Other Vendor' });
    expect(() => verifyEkCertificate(made[0]!.ekCertificateDer, other.ekTrust(), Date.now())).toThrow(expect.objectContaining({ code: 'EK_UNTRUSTED' }));
  });

  it('the certificate stays through a restart of the TPM and cannot be rewritten: TPM_RC_NV_DEFINED, and a raw write is TPM_RC_NV_LOCKED; bad raw arguments are TPM_BAD_ARGUMENT', async () => {
    const m = made[1]!;
    await m.tpm.stop();
    const again = await SwtpmProcess.start(m.tpm.stateDir);
    running.push(again);
    const tpm = await NativeTpm.open(again.tcti);
    try {
      expect(await tpm.readEkCertificate('ecc')).toEqual(m.ekCertificateDer);
      await expect(tpm.writeEkCertificate('ecc', m.ekCertificateDer)).rejects.toMatchObject({ code: 'TPM_RC_NV_DEFINED' });
      await expect(tpm.writeEkCertificate('ecc', Buffer.from('not a certificate'))).rejects.toMatchObject({ code: 'TPM_BAD_ARGUMENT' });
      await expect(tpm.writeEkCertificate('ecc', Buffer.from([0x30, 0x03, 0x02, 0x01, 0x01, 0x00]))).rejects.toMatchObject({ code: 'TPM_BAD_ARGUMENT' });
    } finally {
      await tpm.close();
    }
    const raw = await loadBinding().open(again.tcti);
    try {
      const refusal = (p: Promise<unknown>) => p.then(() => undefined, (e: unknown) => toTpmError(e, 'raw').code);
      expect(await refusal(raw.nvWrite(EK_CERT_NV.ECC_P256, Buffer.alloc(16), false))).toBe('TPM_RC_NV_LOCKED');
      // The addon refuses bad arguments before anything reaches the TPM.
      expect(await refusal(raw.nvDefineSpace(HIERARCHY.ENDORSEMENT, 0x01c10000, 0x42072001, 16))).toBe('TPM_BAD_ARGUMENT');
      expect(await refusal(raw.nvDefineSpace(HIERARCHY.PLATFORM, 0x81000001, 0x42072001, 16))).toBe('TPM_BAD_ARGUMENT');
      expect(await refusal(raw.nvWrite(EK_CERT_NV.ECC_P256, Buffer.alloc(0), false))).toBe('TPM_BAD_ARGUMENT');
      expect(await refusal(raw.nvWrite(EK_CERT_NV.ECC_P256, Buffer.alloc(4), 'yes' as unknown as boolean))).toBe('TPM_BAD_ARGUMENT');
    } finally {
      await raw.close();
    }
  });

  it('refuses a state directory that already holds a TPM (FACTORY_STATE_EXISTS); manufactureMany then stops what it made; an aborted run makes nothing (FACTORY_MANUFACTURE_FAILED)', async () => {
    await expect(factory.manufacture(made[0]!.tpm.stateDir)).rejects.toMatchObject({ code: 'FACTORY_STATE_EXISTS' });
    const made2: ManufacturedTpm[] = [];
    const many = factory.manufactureMany(3, (i) => (i === 2 ? made[0]!.tpm.stateDir : join(dir, 'many', String(i))), {
      concurrency: 1,
      onManufactured: (_i, m) => made2.push(m),
    });
    await expect(many).rejects.toMatchObject({ code: 'FACTORY_STATE_EXISTS' });
    expect(made2).toHaveLength(2);
    for (const m of made2) expect(pidAlive(m.tpm.pid!)).toBe(false);
    const aborted = factory.manufactureMany(2, (i) => join(dir, 'aborted', String(i)), { signal: AbortSignal.abort() });
    await expect(aborted).rejects.toMatchObject({ code: 'FACTORY_MANUFACTURE_FAILED', message: 'manufacturing aborted' });
  });

  it('keeps its CA in caDir when given one: a second factory there issues under the same root; a broken file is FACTORY_CA_INVALID', async () => {
    const caDir = join(dir, 'ca');
    const first = await TpmFactory.create({ caDir });
    const second = await TpmFactory.create({ caDir });
    expect(second.rootPem()).toBe(first.rootPem());
    expect(second.intermediatePem()).toBe(first.intermediatePem());
    const m = await second.manufacture(join(dir, 'cached-ca-tpm'));
    running.push(m.tpm);
    expect(() => verifyEkCertificate(m.ekCertificateDer, first.ekTrust(), Date.now())).not.toThrow();
    writeFileSync(join(caDir, 'ca.json'), '{"v":1,"root":{}}');
    await expect(TpmFactory.create({ caDir })).rejects.toMatchObject({ code: 'FACTORY_CA_INVALID' });
  });
});
