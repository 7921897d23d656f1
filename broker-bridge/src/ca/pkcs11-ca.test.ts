import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { createHash, verify } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../../common/clock.js';
import { createCa, importCa, type BackendSpec } from './ca-setup.js';
import { CrlSigner } from './crl.js';
import { parseAndVerifyCsr } from './csr.js';
import { toPem } from '../../../common/der.js';
import { CertificateIssuer } from './issuer.js';
import { Pkcs11Ca, type Pkcs11CaOpenRequest } from './pkcs11-ca.js';
import { attime, buildCsr, deviceKey, expectCode, openssl } from './test-util.js';
import { startSoftHsm, type SoftHsm } from '../../../test/harness/softhsm.js';

const TD = 'fleet.example';

describe('Pkcs11Ca on SoftHSM2', () => {
  let hsm: SoftHsm;
  let dir: string;
  const clock = new ManualClock(Date.UTC(2026, 2, 1));
  let base: Omit<Pkcs11CaOpenRequest, 'keyLabel'>;

  beforeAll(async () => {
    hsm = await startSoftHsm({ tokenLabel: 'ca-test' });
    process.env['SOFTHSM2_CONF'] = hsm.env.SOFTHSM2_CONF; // before the module's C_Initialize
    dir = await mkdtemp(join(tmpdir(), 'pkcs11-ca-test-'));
    base = { modulePath: hsm.modulePath, tokenLabel: hsm.tokenLabel, pin: hsm.pin };
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
    await hsm?.stop();
  });

  /** An independent view of the token (own C_Initialize / login), as an auditor would have. */
  function withRawToken<T>(fn: (p: InstanceType<typeof pkcs11js.PKCS11>, session: Buffer) => T): T {
    const p = new pkcs11js.PKCS11();
    p.load(hsm.modulePath);
    p.C_Initialize();
    try {
      const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === hsm.tokenLabel);
      if (!slot) throw new Error('token not found');
      const session = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
      p.C_Login(session, pkcs11js.CKU_USER, hsm.pin);
      return fn(p, session);
    } finally {
      p.C_Finalize();
      p.close();
    }
  }

  function findPrivateKey(p: InstanceType<typeof pkcs11js.PKCS11>, session: Buffer, label: string): Buffer {
    p.C_FindObjectsInit(session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
      { type: pkcs11js.CKA_LABEL, value: label },
    ]);
    const [h] = p.C_FindObjects(session, 2);
    p.C_FindObjectsFinal(session);
    if (!h) throw new Error(`no key ${label}`);
    return h;
  }

  it('generates a non-extractable, sensitive token key and finds it again by label or slot', async () => {
    const ca = await Pkcs11Ca.open({ ...base, keyLabel: 'issuing-a', keyMode: 'generate' });
    const pub = ca.publicKey().export({ format: 'jwk' });
    const tbs = Buffer.from('tbs bytes');
    const { signature } = await ca.sign({ tbs });
    expect(verify('sha256', tbs, ca.publicKey(), signature)).toBe(true);
    await ca.close();
    await expectCode(ca.sign({ tbs }), 'CA_BACKEND_FAILED');

    const again = await Pkcs11Ca.open({ modulePath: hsm.modulePath, slot: hsm.slot, pin: hsm.pin, keyLabel: 'issuing-a' });
    expect(again.publicKey().export({ format: 'jwk' })).toEqual(pub);
    await again.close();

    withRawToken((p, s) => {
      const key = findPrivateKey(p, s, 'issuing-a');
      const attrs = p.C_GetAttributeValue(s, key, [
        { type: pkcs11js.CKA_EXTRACTABLE },
        { type: pkcs11js.CKA_SENSITIVE },
        { type: pkcs11js.CKA_TOKEN },
        { type: pkcs11js.CKA_NEVER_EXTRACTABLE },
        { type: pkcs11js.CKA_ALWAYS_SENSITIVE },
        { type: pkcs11js.CKA_LOCAL },
      ]);
      expect(attrs.map((a) => a.value[0])).toEqual([0, 1, 1, 1, 1, 1]);
      let err: unknown;
      try {
        p.C_GetAttributeValue(s, key, [{ type: pkcs11js.CKA_VALUE }]);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(pkcs11js.Pkcs11Error);
      expect((err as { code: number }).code).toBe(pkcs11js.CKR_ATTRIBUTE_SENSITIVE);
    });
  });

  it('reports missing keys, taken labels, wrong PINs and unknown tokens with codes', async () => {
    await expectCode(Pkcs11Ca.open({ ...base, keyLabel: 'nope' }), 'CA_KEY_NOT_FOUND');
    const a = await Pkcs11Ca.open({ ...base, keyLabel: 'issuing-b', keyMode: 'find-or-generate' });
    const b = await Pkcs11Ca.open({ ...base, keyLabel: 'issuing-b', keyMode: 'find-or-generate' });
    expect(b.publicKey().export({ format: 'jwk' })).toEqual(a.publicKey().export({ format: 'jwk' }));
    await expectCode(Pkcs11Ca.open({ ...base, keyLabel: 'issuing-b', keyMode: 'generate' }), 'CA_CONFIG_INVALID');
    await a.close();
    await b.close();
    await expectCode(Pkcs11Ca.open({ ...base, pin: '000000', keyLabel: 'issuing-b' }), 'CA_CONFIG_INVALID');
    await expectCode(Pkcs11Ca.open({ ...base, tokenLabel: 'no-such-token', keyLabel: 'issuing-b' }), 'CA_CONFIG_INVALID');
    await expectCode(Pkcs11Ca.open({ ...base, sessions: 0, keyLabel: 'issuing-b' }), 'CA_CONFIG_INVALID');
  });

  it('refuses a token key that is extractable', async () => {
    withRawToken((p, s) => {
      const common = [
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_LABEL, value: 'leaky' },
      ];
      p.C_GenerateKeyPair(
        s,
        { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN },
        [...common, { type: pkcs11js.CKA_EC_PARAMS, value: Buffer.from('06082a8648ce3d030107', 'hex') }, { type: pkcs11js.CKA_VERIFY, value: true }],
        [...common, { type: pkcs11js.CKA_SIGN, value: true }, { type: pkcs11js.CKA_SENSITIVE, value: false }, { type: pkcs11js.CKA_EXTRACTABLE, value: true }],
      );
    });
    await expectCode(Pkcs11Ca.open({ ...base, keyLabel: 'leaky' }), 'CA_KEY_PERMISSIONS');
  });

  for (const variant of [
    { sessions: 4, signMode: 'async' as const },
    { sessions: 1, signMode: 'async' as const },
    { sessions: 4, signMode: 'sync' as const },
  ]) {
    it(`200 concurrent issuances succeed with zero CKR_OPERATION_ACTIVE (${variant.sessions} sessions, ${variant.signMode})`, async () => {
      const label = `issuing-c-${variant.sessions}-${variant.signMode}`;
      const outDir = join(dir, label);
      const backend: BackendSpec = { kind: 'pkcs11', ...base, keyLabel: label, ...variant };
      const ca = await createCa({ outDir, clock, trustDomain: TD, root: { commonName: 'HSM Root' }, issuing: { commonName: 'HSM Issuing' }, backend });
      try {
        const p11 = ca.backend as Pkcs11Ca;
        const issuer = new CertificateIssuer({ backend: p11, issuingCertificate: ca.issuingCertificatePem, clock, trustDomain: TD });
        const keys = Array.from({ length: 20 }, () => deviceKey());
        const results = await Promise.all(
          Array.from({ length: 200 }, (_, i) => {
            const k = keys[i % keys.length] as ReturnType<typeof deviceKey>;
            const csr = parseAndVerifyCsr(buildCsr({ ...k, commonNames: [`dev-${i}`] }));
            return issuer.issue({ deviceId: csr.commonName ?? '', publicKeySpki: csr.publicKeySpki, lifetimeSec: 3_600, backdateSec: 60, trustDomain: TD });
          }),
        );
        const m = p11.metrics();
        expect(m.operationActive).toBe(0);
        expect(m.failures).toBe(0);
        expect(m.signatures).toBeGreaterThanOrEqual(200);
        expect(m.sessions).toBe(variant.sessions);
        expect(new Set(results.map((r) => r.serialNumber)).size).toBe(200);

        const files: string[] = [];
        for (const [i, r] of results.entries()) {
          const f = join(outDir, `leaf-${i}.pem`);
          await writeFile(f, toPem(r.certificateDer, 'CERTIFICATE'));
          files.push(f);
        }
        const v = await openssl(['verify', '-attime', attime(clock.now()), '-CAfile', ca.files.root, '-untrusted', ca.files.issuing, ...files]);
        expect(v.code, v.stdout + v.stderr).toBe(0);
        expect(v.stdout.match(/: OK$/gm)?.length).toBe(200);

        const leaf = new x509.X509Certificate(results[7]?.certificateDer as Buffer);
        expect(leaf.subject).toBe('CN=dev-7');
        const issuing = new x509.X509Certificate(ca.issuingCertificatePem);
        expect(leaf.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId).toBe(
          issuing.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId,
        );
        expect(issuing.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId).toBe(
          createHash('sha1').update(Buffer.from(issuing.publicKey.rawData).subarray(-65)).digest('hex'),
        );
      } finally {
        await ca.backend.close();
      }
    });
  }

  it('without the pool, one shared session does hit CKR_OPERATION_ACTIVE (why the pool exists)', async () => {
    const ca = await Pkcs11Ca.open({ ...base, keyLabel: 'issuing-a' });
    await ca.close();
    const code = withRawToken((p, s) => {
      const key = findPrivateKey(p, s, 'issuing-a');
      p.C_SignInit(s, { mechanism: pkcs11js.CKM_ECDSA }, key);
      try {
        p.C_SignInit(s, { mechanism: pkcs11js.CKM_ECDSA }, key);
        return 0;
      } catch (e) {
        return (e as { code: number }).code;
      }
    });
    expect(code).toBe(pkcs11js.CKR_OPERATION_ACTIVE);
  });

  it('close() lets in-flight signatures finish and rejects the queued ones', async () => {
    const ca = await Pkcs11Ca.open({ ...base, keyLabel: 'issuing-a', sessions: 2 });
    const tbs = Buffer.from('x');
    const settling = Promise.allSettled(Array.from({ length: 50 }, () => ca.sign({ tbs })));
    await ca.close();
    const settled = await settling;
    const ok = settled.filter((s) => s.status === 'fulfilled');
    const failed = settled.filter((s): s is PromiseRejectedResult => s.status === 'rejected');
    expect(ok.length + failed.length).toBe(50);
    expect(ok.length).toBeGreaterThanOrEqual(2);
    for (const f of failed) expect((f.reason as { code?: string }).code).toBe('CA_BACKEND_FAILED');
    expect(ca.metrics().operationActive).toBe(0);
  });

  it('bounds the wait queue with CA_BUSY', async () => {
    const ca = await Pkcs11Ca.open({ ...base, keyLabel: 'issuing-a', sessions: 1, maxQueue: 3 });
    try {
      const tbs = Buffer.from('x');
      const settled = await Promise.allSettled(Array.from({ length: 10 }, () => ca.sign({ tbs })));
      const busy = settled.filter((s) => s.status === 'rejected' && (s.reason as { code?: string }).code === 'CA_BUSY');
      expect(busy.length).toBe(6); // 1 signing + 3 waiting
      expect(settled.filter((s) => s.status === 'fulfilled').length).toBe(4);
    } finally {
      await ca.close();
    }
  });

  it('imports an existing issuing CA by key label and signs a CRL openssl verifies', async () => {
    const created = await createCa({
      outDir: join(dir, 'orig'),
      clock,
      trustDomain: TD,
      root: { commonName: 'HSM Root 2' },
      issuing: { commonName: 'HSM Issuing 2' },
      backend: { kind: 'pkcs11', ...base, keyLabel: 'issuing-import' },
    });
    await created.backend.close();
    const imported = await importCa({
      outDir: join(dir, 'imported'),
      trustDomain: TD,
      rootCertificate: created.rootCertificatePem,
      issuingCertificate: created.issuingCertificatePem,
      backend: { kind: 'pkcs11', ...base, keyLabel: 'issuing-import' },
    });
    try {
      expect(imported.chainPem).toBe(created.chainPem);
      await expectCode(
        importCa({
          outDir: join(dir, 'imported-wrong'),
          trustDomain: TD,
          rootCertificate: created.rootCertificatePem,
          issuingCertificate: created.issuingCertificatePem,
          backend: { kind: 'pkcs11', ...base, keyLabel: 'issuing-a' },
        }),
        'CA_CONFIG_INVALID',
      );

      const issuer = new CertificateIssuer({ backend: imported.backend, issuingCertificate: imported.issuingCertificatePem, clock, trustDomain: TD });
      const leaf = await issuer.issue({ deviceId: 'dev-crl', publicKeySpki: deviceKey().spki, lifetimeSec: 3_600, backdateSec: 0, trustDomain: TD });
      const crls = new CrlSigner({ backend: imported.backend, issuingCertificate: imported.issuingCertificatePem, clock });
      const crl = await crls.sign({
        crlNumber: 1,
        nextUpdateSec: 3_600,
        revoked: [{ serialNumber: leaf.serialNumber, revokedAt: new Date(clock.now()), reason: 'keyCompromise' }],
      });
      const crlPath = join(dir, 'hsm.crl.pem');
      await writeFile(crlPath, toPem(crl.crlDer, 'X509 CRL'));
      const v = await openssl(['crl', '-in', crlPath, '-CAfile', imported.files.chain, '-verify', '-noout']);
      expect(v.code, v.stderr).toBe(0);
      expect(v.stderr + v.stdout).toMatch(/verify OK/);
    } finally {
      await imported.backend.close();
    }
  });
});
