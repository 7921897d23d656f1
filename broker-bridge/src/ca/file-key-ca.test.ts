import { generateKeyPairSync, verify } from 'node:crypto';
import { chmod, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileKeyCa } from './file-key-ca.js';
import { expectCode } from './test-util.js';

describe('FileKeyCa', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'file-ca-test-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('creates the key file 0600 even under a permissive umask', async () => {
    const old = process.umask(0);
    try {
      const ca = await FileKeyCa.create({ keyPath: join(dir, 'k0.pem') });
      expect((await stat(join(dir, 'k0.pem'))).mode & 0o777).toBe(0o600);
      await ca.close();
    } finally {
      process.umask(old);
    }
  });

  it('signs with the key it reloads; signatures verify under publicKey()', async () => {
    const keyPath = join(dir, 'k1.pem');
    const created = await FileKeyCa.create({ keyPath });
    const reopened = await FileKeyCa.open({ keyPath });
    expect(reopened.publicKey().export({ format: 'jwk' })).toEqual(created.publicKey().export({ format: 'jwk' }));
    const tbs = Buffer.from('to be signed');
    const { signature } = await reopened.sign({ tbs });
    expect(signature[0]).toBe(0x30); // DER Ecdsa-Sig-Value
    expect(verify('sha256', tbs, created.publicKey(), signature)).toBe(true);
    expect(reopened.kind).toBe('file');
    expect(reopened.algorithm).toBe('ECDSA-P256-SHA256');
    await reopened.close();
    await expectCode(reopened.sign({ tbs }), 'CA_BACKEND_FAILED');
  });

  it('refuses a key file readable by group or other', async () => {
    const keyPath = join(dir, 'k2.pem');
    await (await FileKeyCa.create({ keyPath })).close();
    for (const mode of [0o644, 0o640, 0o604, 0o660]) {
      await chmod(keyPath, mode);
      await expectCode(FileKeyCa.open({ keyPath }), 'CA_KEY_PERMISSIONS');
    }
    await chmod(keyPath, 0o400);
    await (await FileKeyCa.open({ keyPath })).close();
  });

  it('never overwrites an existing key', async () => {
    const keyPath = join(dir, 'k3.pem');
    await (await FileKeyCa.create({ keyPath })).close();
    await expectCode(FileKeyCa.create({ keyPath }), 'CA_CONFIG_INVALID');
  });

  it('reports a missing key and rejects non-P-256 or garbage keys', async () => {
    await expectCode(FileKeyCa.open({ keyPath: join(dir, 'absent.pem') }), 'CA_KEY_NOT_FOUND');
    const p384 = join(dir, 'p384.pem');
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'secp384r1' });
    await writeFile(p384, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    await expectCode(FileKeyCa.open({ keyPath: p384 }), 'CA_CONFIG_INVALID');
    const junk = join(dir, 'junk.pem');
    await writeFile(junk, 'not a key', { mode: 0o600 });
    await expectCode(FileKeyCa.open({ keyPath: junk }), 'CA_CONFIG_INVALID');
  });
});
