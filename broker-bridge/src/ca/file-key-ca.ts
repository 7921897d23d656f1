import { createPrivateKey, createPublicKey, generateKeyPairSync, sign as cryptoSign, type KeyObject } from 'node:crypto';
import { open } from 'node:fs/promises';
import { assertP256, type CaBackend, type SignRequest, type SignResponse } from './ca-backend.js';
import { CaError } from './errors.js';

export interface FileKeyCreateRequest {
  /** Where to write the new PKCS#8 PEM key. Must not exist yet. */
  readonly keyPath: string;
}

export interface FileKeyOpenRequest {
  readonly keyPath: string;
}

/**
 * CA key in a PEM file, for quick starts and tests. The file is the secret: it is created 0600 and
 * a key file readable by group or other is refused rather than silently trusted.
 */
export class FileKeyCa implements CaBackend {
  readonly kind = 'file' as const;
  readonly algorithm = 'ECDSA-P256-SHA256' as const;
  readonly keyPath: string;
  readonly #privateKey: KeyObject;
  readonly #publicKey: KeyObject;
  #closed = false;

  private constructor(keyPath: string, privateKey: KeyObject) {
    this.keyPath = keyPath;
    this.#privateKey = privateKey;
    this.#publicKey = createPublicKey(privateKey);
  }

  static async create(req: FileKeyCreateRequest): Promise<FileKeyCa> {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const pem = privateKey.export({ type: 'pkcs8', format: 'pem' });
    let fh;
    try {
      // 'wx': never overwrite an existing key; mode applies at creation so no window with wider perms.
      fh = await open(req.keyPath, 'wx', 0o600);
    } catch (e) {
      throw new CaError('CA_CONFIG_INVALID', `cannot create key file ${req.keyPath}`, { cause: e });
    }
    try {
      await fh.chmod(0o600); // umask can only narrow the creation mode; make it exact anyway
      await fh.writeFile(pem);
      await fh.sync();
    } finally {
      await fh.close();
    }
    return new FileKeyCa(req.keyPath, privateKey);
  }

  static async open(req: FileKeyOpenRequest): Promise<FileKeyCa> {
    let fh;
    try {
      fh = await open(req.keyPath, 'r');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'CA_KEY_NOT_FOUND' : 'CA_CONFIG_INVALID';
      throw new CaError(code, `cannot open key file ${req.keyPath}`, { cause: e });
    }
    let pem: string;
    try {
      // Check the mode of the file we actually opened, not of whatever the path names later.
      const st = await fh.stat();
      if (!st.isFile()) throw new CaError('CA_CONFIG_INVALID', `${req.keyPath} is not a regular file`);
      if ((st.mode & 0o077) !== 0) {
        throw new CaError('CA_KEY_PERMISSIONS', `key file ${req.keyPath} is accessible by group/other`, {
          details: { mode: (st.mode & 0o777).toString(8) },
        });
      }
      pem = await fh.readFile('utf8');
    } finally {
      await fh.close();
    }
    let key: KeyObject;
    try {
      key = createPrivateKey(pem);
    } catch (e) {
      throw new CaError('CA_CONFIG_INVALID', `key file ${req.keyPath} holds no readable private key`, { cause: e });
    }
    assertP256(key, 'CA key');
    return new FileKeyCa(req.keyPath, key);
  }

  publicKey(): KeyObject {
    return this.#publicKey;
  }

  sign(req: SignRequest): Promise<SignResponse> {
    if (this.#closed) return Promise.reject(new CaError('CA_BACKEND_FAILED', 'file CA backend is closed'));
    try {
      return Promise.resolve({ signature: cryptoSign('sha256', req.tbs, this.#privateKey) });
    } catch (e) {
      return Promise.reject(new CaError('CA_BACKEND_FAILED', 'signing failed', { cause: e }));
    }
  }

  close(): Promise<void> {
    this.#closed = true;
    return Promise.resolve();
  }
}
