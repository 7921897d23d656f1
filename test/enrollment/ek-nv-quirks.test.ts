import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { isCodedError } from '../../common/coded-error.js';
import { pemBlocks, seq, tlv } from '../../common/der.js';
import { OID, readCertificateFields } from '../../native/lib/certificate-fields.js';
import { buildCertificate, defaultEkExtensions } from '../../native/lib/ek-test-pki.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import { readEk, registerDevice } from '../../sim/src/sim/register-device.js';
import { eventually, startFleetFixture, type FleetFixture } from '../agent/fleet-fixture.js';
import { startTpm, type TestTpm } from '../harness/index.js';

const run = promisify(execFile);
/** swtpm 0.7.1 keeps its P-384 EK certificate in the high range (harness.test.ts). */
const ECC_EK_CERT = '0x01c00016';
/** ST33HTPHF2EI2C's index size (tpm2-tools #3474). */
const ST_INDEX_BYTES = 1600;

/**
 * EK certificates stored the way real chips store them (issue 13), put into swtpm's NV with
 * tpm2-tools (not our addon): the index redefined at the chip's size and written with padding or the
 * PC Client prefix. The station side reads the EK as the factory does, and the agent enrolls over the
 * real bridge, mosquitto and swtpm.
 */
describe('EK certificate NV quirks and EK variants of real chips (real swtpm, tpm2-tools, bridge, mosquitto)', () => {
  let fx: FleetFixture;
  const scratch = mkdtempSync(join(tmpdir(), 'ek-nv-'));
  beforeAll(async () => {
    fx = await startFleetFixture();
  });
  afterAll(async () => {
    await fx?.stop();
    rmSync(scratch, { recursive: true, force: true });
  });

  const tpm2 = async (tpm: TestTpm, tool: string, ...args: string[]) => (await run(tool, ['-T', tpm.tcti, ...args], { cwd: scratch, timeout: 20_000 })).stdout;

  /** Replaces the EK certificate index with `make(certificate)`, as a platform (factory) would define it. */
  const rewriteIndex = (name: string, make: (der: Buffer) => Buffer, seen: { der?: Buffer; nv?: Buffer }) => async (tpm: TestTpm) => {
    const certPath = join(scratch, `${name}.der`);
    await tpm2(tpm, 'tpm2_nvread', ECC_EK_CERT, '-C', 'o', '-o', certPath);
    const der = readFileSync(certPath);
    const nv = make(der);
    const nvPath = join(scratch, `${name}.nv`);
    writeFileSync(nvPath, nv);
    await tpm2(tpm, 'tpm2_nvundefine', '-C', 'p', ECC_EK_CERT);
    await tpm2(tpm, 'tpm2_nvdefine', '-C', 'p', '-s', String(nv.length), '-a', 'ppwrite|ppread|ownerread|authread|no_da|platformcreate', ECC_EK_CERT);
    await tpm2(tpm, 'tpm2_nvwrite', '-C', 'p', '-i', nvPath, ECC_EK_CERT);
    // What a reader of the chip now gets: the index as written, quirk included.
    const back = join(scratch, `${name}.back`);
    await tpm2(tpm, 'tpm2_nvread', ECC_EK_CERT, '-C', 'o', '-o', back);
    seen.der = der;
    seen.nv = readFileSync(back);
  };

  /** An EK certificate index as a platform defines it, holding `content`. */
  const defineIndex = async (tpm: TestTpm, index: string, content: Buffer) => {
    const path = join(scratch, `index-${index}-${content.length}.bin`);
    writeFileSync(path, content);
    await tpm2(tpm, 'tpm2_nvdefine', '-C', 'p', '-s', String(content.length), '-a', 'ppwrite|ppread|ownerread|authread|no_da|platformcreate', index);
    await tpm2(tpm, 'tpm2_nvwrite', '-C', 'p', '-i', path, index);
  };

  /** An EK certificate for `ek` from the TPM's own manufacturer (swtpm_localca's intermediate and its key). */
  const issueByManufacturer = (tpm: TestTpm, ek: KeyObject): Buffer => {
    const issuerDer = pemBlocks(tpm.manufacturerIntermediatePem, 'CERTIFICATE')[0]!;
    const issuer = readCertificateFields(issuerDer);
    const signingKey = createPrivateKey(readFileSync(join(tpm.manufacturerCaDir, 'signkey.pem')));
    const now = Date.now();
    return buildCertificate({
      subject: [],
      issuer: issuer.subject,
      serial: 0x4832,
      notBefore: now - 86_400_000,
      notAfter: now + 3650 * 86_400_000,
      publicKey: ek,
      signingKey,
      extensions: [
        ...defaultEkExtensions(ek, createPublicKey(signingKey)).filter((e) => e.oid !== OID.authorityKeyIdentifier),
        { oid: OID.authorityKeyIdentifier, critical: false, value: seq(tlv(0x80, issuer.subjectKeyId!)) },
      ],
    });
  };

  const pcClientPrefix = (der: Buffer) => Buffer.concat([Buffer.from([0x10, 0x01, 0x00, der.length >> 8, der.length & 0xff]), der]);
  const padTo = (b: Buffer, size: number) => Buffer.concat([b, Buffer.alloc(size - b.length, 0xff)]);

  it.each<[string, string, (der: Buffer) => Buffer]>([
    ['0xFF padding to 1,600 bytes (ST33HTPHF2EI2C)', 'ek-nv-padded', (der) => padTo(der, ST_INDEX_BYTES)],
    ['the PC Client prefix 10 01 00 <len> (Intel)', 'ek-nv-prefixed', pcClientPrefix],
    ['the prefix and padding together', 'ek-nv-both', (der) => padTo(pcClientPrefix(der), ST_INDEX_BYTES)],
  ])('enrolls a device whose index holds the certificate with %s', async (_name, id, make) => {
    const seen: { der?: Buffer; nv?: Buffer } = {};
    const d = await fx.device(id, { beforeRegister: rewriteIndex(id, make, seen) });
    expect(seen.nv!.equals(make(seen.der!))).toBe(true);
    expect(seen.nv!.equals(seen.der!)).toBe(false);
    // The factory read the certificate alone, and so does the agent.
    const ek = await readEk(d.tpm.tcti);
    expect(ek.ekCertificateDer.equals(seen.der!)).toBe(true);
    const a = fx.agent(d);
    await a.start();
    expect(a.state).toBe('online');
    // It says which EK it attests with, locally and in the status the fleet ingests.
    expect(a.status().ek).toEqual({ kind: 'ecc', template: 'H-3 ECC P-384', nvIndex: '0x01c00016' });
    await eventually(() => fx.fleet.inventory.getDevice(d.bootstrap.deviceId)?.status?.tpmEk === 'H-3 ECC P-384 0x01c00016', 10_000, 'the EK in the ingested status');
    const device = fx.fleet.inventory.getDevice(d.bootstrap.deviceId);
    expect(device?.certSerial).toBe(a.status().certSerial);
    expect(Buffer.from(device!.ekCertificate!, 'base64').equals(seen.der!)).toBe(true);
    await a.stop();
  }, 60_000);

  it('an RSA-only chip (no ECC EK certificate): the agent picks the RSA EK, says so, and enrolls', async () => {
    const d = await fx.device('ek-rsa-only', {
      beforeRegister: async (tpm) => {
        await tpm2(tpm, 'tpm2_nvundefine', '-C', 'p', ECC_EK_CERT);
      },
    });
    const ek = await readEk(d.tpm.tcti);
    expect(ek.ekKind).toBe('rsa');
    const a = fx.agent(d);
    await a.start();
    expect(a.state).toBe('online');
    expect(a.status().ek).toEqual({ kind: 'rsa', template: 'L-1 RSA-2048', nvIndex: '0x01c00002' });
    await eventually(() => fx.fleet.inventory.getDevice(d.bootstrap.deviceId)?.status?.tpmEk === 'L-1 RSA-2048 0x01c00002', 10_000, 'the EK in the ingested status');
    expect(fx.fleet.inventory.getDevice(d.bootstrap.deviceId)?.ekKind).toBe('rsa');
    await a.stop();
  }, 60_000);

  it('the station registered the RSA EK (its ECC certificate did not verify): the bootstrap says so and the agent attests with RSA', async () => {
    const tpm = await startTpm(); // the fixture's manufacturer: the default one of this test worker
    try {
      const bootstrap = await registerDevice(fx.fleet, { deviceId: 'ek-registered-rsa', tcti: tpm.tcti, ...(await readEk(tpm.tcti, 'rsa')) });
      expect(bootstrap.ekKind).toBe('rsa');
      const a = fx.agent({ bootstrap, dataDir: join(scratch, 'registered-rsa') });
      await a.start();
      expect(a.state).toBe('online');
      expect(a.status().ek).toEqual({ kind: 'rsa', template: 'L-1 RSA-2048', nvIndex: '0x01c00002' });
      await a.stop();
    } finally {
      await tpm.stop();
    }
  }, 60_000);

  it('an H-2 chip (ECC P-256 in the high range, 0x01c00014): the agent derives the EK from the H-2 template and enrolls', async () => {
    const H2 = '0x01c00014';
    let h2Key: Buffer | undefined;
    let l2Key: Buffer | undefined;
    const d = await fx.device('ek-h2', {
      beforeRegister: async (tpm) => {
        // A chip that ships only the H-2 certificate: the others removed with tpm2-tools.
        await tpm2(tpm, 'tpm2_nvundefine', '-C', 'p', ECC_EK_CERT);
        await tpm2(tpm, 'tpm2_nvundefine', '-C', 'p', '0x01c00002');
        // Each context reads the indices once: one before and one after the H-2 index exists.
        const ekOf = async () => {
          const t = await NativeTpm.open(tpm.tcti);
          try {
            const k = await t.createEk('ecc');
            await t.flush(k);
            return k.spki;
          } finally {
            await t.close();
          }
        };
        l2Key = await ekOf(); // no index: the low-range template
        // The vendor's certificate for the H-2 EK: first learn its key with a placeholder in the index.
        await defineIndex(tpm, H2, seq(Buffer.alloc(8)));
        h2Key = await ekOf();
        await tpm2(tpm, 'tpm2_nvundefine', '-C', 'p', H2);
        await defineIndex(tpm, H2, issueByManufacturer(tpm, createPublicKey({ key: h2Key!, format: 'der', type: 'spki' })));
      },
    });
    expect(h2Key!.equals(l2Key!)).toBe(false);
    expect(createPublicKey({ key: h2Key!, format: 'der', type: 'spki' }).asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    const ek = await readEk(d.tpm.tcti);
    expect(ek.ekPublicHash).toBe(createHash('sha256').update(h2Key!).digest('hex'));
    const a = fx.agent(d);
    await a.start();
    expect(a.state).toBe('online');
    expect(a.status().ek).toEqual({ kind: 'ecc', template: 'H-2 ECC P-256', nvIndex: H2 });
    await eventually(() => fx.fleet.inventory.getDevice(d.bootstrap.deviceId)?.status?.tpmEk === `H-2 ECC P-256 ${H2}`, 10_000, 'the EK in the ingested status');
    await a.stop();
  }, 60_000);

  it('refuses an index that holds a cut-off certificate: TPM_EK_NV_INVALID, with the reason', async () => {
    const seen: { der?: Buffer; nv?: Buffer } = {};
    let err: unknown;
    try {
      await fx.device('ek-nv-cut', { beforeRegister: rewriteIndex('cut', (der) => der.subarray(0, 400), seen) });
    } catch (e) {
      err = e;
    }
    expect(isCodedError(err) && err.code).toBe('TPM_EK_NV_INVALID');
    expect((err as Error).message).toMatch(/0x1c00016 does not hold a certificate: .*declares \d+ bytes but the index holds 400/);
  }, 60_000);
});
