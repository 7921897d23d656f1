import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import mqtt from 'mqtt';
import {
  createManufacturerCa,
  pidAlive,
  selectedBackend,
  startBroker,
  startSoftHsm,
  startTpm,
  trackedPids,
  type TestBroker,
  type TestTpm,
} from './index.js';
import globalSetup from './global-setup.js';

const run = promisify(execFile);
const scratch = mkdtempSync(join(tmpdir(), 'harness-test-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/**
 * tpm2-tools against the harness's swtpm. Test-only: the product reads NV and drives the TPM through
 * its native ESAPI addon (native/), never by spawning tools (~14 ms per process, FACTS.md).
 */
async function tpm2(tpm: TestTpm, tool: string, ...args: string[]): Promise<string> {
  const { stdout } = await run(tool, ['-T', tpm.tcti, ...args], { cwd: scratch, timeout: 20_000 });
  return stdout;
}

/** Reads an EK certificate (DER) from NV with tpm2_nvread into a file; returns its path. */
async function nvReadCert(tpm: TestTpm, index: string): Promise<string> {
  const out = join(scratch, `${tpm.port}-${index}.der`);
  await tpm2(tpm, 'tpm2_nvread', index, '-o', out);
  return out;
}

/** `openssl verify` of a DER certificate against the manufacturer root (+ intermediate). */
async function opensslVerify(certPath: string, rootPem: string, intermediatePem: string): Promise<void> {
  const root = join(scratch, `root-${Math.random().toString(36).slice(2)}.pem`);
  const inter = join(scratch, `inter-${Math.random().toString(36).slice(2)}.pem`);
  writeFileSync(root, rootPem);
  writeFileSync(inter, intermediatePem);
  const { stdout } = await run('openssl', ['verify', '-CAfile', root, '-untrusted', inter, certPath]);
  expect(stdout.trim()).toBe(`${certPath}: OK`);
}

async function containerPublishing(port: number): Promise<string[]> {
  const { stdout } = await run('docker', ['ps', '-q', '--filter', 'label=tpmfleet.service', '--filter', `publish=${port}`]);
  return stdout.split(/\s+/).filter(Boolean);
}

/** After stop(): the process is gone (process backend) or no container publishes the port (container backend). */
async function expectGone(svc: { pid: number | undefined }, port: number): Promise<void> {
  if (selectedBackend() === 'process') {
    expect(svc.pid).toBeTypeOf('number');
    expect(pidAlive(svc.pid!)).toBe(false);
    expect(trackedPids()).not.toContain(svc.pid);
  } else {
    expect(await containerPublishing(port)).toEqual([]);
  }
}

const RSA_EK_CERT = '0x01c00002';
const ECC_EK_CERT = '0x01c00016'; // swtpm 0.7.1: a P-384 EK in the high range, not 0x01c0000a

describe('test harness', () => {
  it('runs the backend the environment asked for', async () => {
    const want = process.env['TEST_BACKEND'] ?? 'auto';
    const expected = want !== 'process' && process.env['TPMFLEET_TEST_IMAGE'] ? 'container' : 'process';
    expect(selectedBackend()).toBe(expected);
    const tpm = await startTpm();
    try {
      if (expected === 'container') {
        expect(tpm.pid).toBeUndefined();
        expect(await containerPublishing(tpm.port)).toHaveLength(1);
      } else {
        expect(tpm.pid).toBeTypeOf('number');
        expect(trackedPids()).toContain(tpm.pid);
      }
    } finally {
      await tpm.stop();
    }
    await expectGone(tpm, tpm.port);
  });

  it('manufactures distinct TPMs whose RSA and ECC EK certificates (NV) chain to the manufacturer root', async () => {
    const t0 = Date.now();
    const [a, b] = await Promise.all([startTpm(), startTpm()]);
    console.log(`[harness.test] two TPMs manufactured and started in parallel: ${Date.now() - t0} ms (${selectedBackend()})`);
    try {
      expect(a!.tcti).toBe(`swtpm:host=127.0.0.1,port=${a!.port}`);
      expect(a!.ctrlPort).toBe(a!.port + 1);
      expect(a!.manufacturerRootPem).toBe(b!.manufacturerRootPem);
      expect(new X509Certificate(a!.manufacturerRootPem).ca).toBe(true);
      const certs: Record<string, Buffer> = {};
      for (const t of [a!, b!]) {
        for (const index of [RSA_EK_CERT, ECC_EK_CERT]) {
          const path = await nvReadCert(t, index);
          await opensslVerify(path, t.manufacturerRootPem, t.manufacturerIntermediatePem);
          certs[`${t.port}${index}`] = new X509Certificate(readFileSync(path)).raw;
        }
      }
      expect(certs[`${a!.port}${RSA_EK_CERT}`]!.equals(certs[`${b!.port}${RSA_EK_CERT}`]!)).toBe(false);
      expect(certs[`${a!.port}${ECC_EK_CERT}`]!.equals(certs[`${b!.port}${ECC_EK_CERT}`]!)).toBe(false);
    } finally {
      await Promise.all([a!.stop(), b!.stop()]);
    }
    await expectGone(a!, a!.port);
    await expectGone(b!, b!.port);
  });

  it('restart keeps the TPM state and ports, and stops orderly (no dictionary-attack lockout count)', async () => {
    const tpm = await startTpm();
    try {
      const before = await nvReadCert(tpm, ECC_EK_CERT);
      const ekBefore = new X509Certificate(readFileSync(before));
      // Use a DA-protected key (one with an authValue): a disorderly stop would now count a failure.
      await tpm2(tpm, 'tpm2_createprimary', '-C', 'o', '-G', 'ecc', '-c', 'p.ctx');
      await tpm2(tpm, 'tpm2_create', '-C', 'p.ctx', '-G', 'ecc', '-p', 'pw', '-u', 'k.pub', '-r', 'k.priv');
      await tpm2(tpm, 'tpm2_flushcontext', '-t');
      await tpm2(tpm, 'tpm2_load', '-C', 'p.ctx', '-u', 'k.pub', '-r', 'k.priv', '-c', 'k.ctx');
      writeFileSync(join(scratch, 'msg'), 'hello');
      await tpm2(tpm, 'tpm2_sign', '-c', 'k.ctx', '-p', 'pw', '-o', 'sig', 'msg');
      await tpm2(tpm, 'tpm2_flushcontext', '-t');
      const { port, tcti, pid } = tpm;
      for (let i = 0; i < 3; i++) await tpm.restart();
      expect([tpm.port, tpm.tcti]).toEqual([port, tcti]);
      if (pid !== undefined) {
        expect(pidAlive(pid)).toBe(false);
        expect(tpm.pid).not.toBe(pid);
      }
      const after = new X509Certificate(readFileSync(await nvReadCert(tpm, ECC_EK_CERT)));
      expect(after.raw.equals(ekBefore.raw)).toBe(true);
      const props = await tpm2(tpm, 'tpm2_getcap', 'properties-variable');
      expect(props).toMatch(/TPM2_PT_LOCKOUT_COUNTER: 0x0\b/);
    } finally {
      await tpm.stop();
    }
  });

  it('createManufacturerCa gives an independent manufacturer whose EK certificates do not chain to the default one', async () => {
    const other = await createManufacturerCa();
    expect(new X509Certificate(other.rootPem).ca).toBe(true);
    const [ours, theirs] = await Promise.all([startTpm(), startTpm({ manufacturerCaDir: other.dir })]);
    try {
      expect(theirs!.manufacturerRootPem).toBe(other.rootPem);
      expect(theirs!.manufacturerCaDir).toBe(other.dir);
      const cert = await nvReadCert(theirs!, RSA_EK_CERT);
      await opensslVerify(cert, other.rootPem, other.intermediatePem);
      await expect(opensslVerify(cert, ours!.manufacturerRootPem, ours!.manufacturerIntermediatePem)).rejects.toThrow();
    } finally {
      await Promise.all([ours!.stop(), theirs!.stop()]);
    }
  });

  describe('broker', () => {
    let broker: TestBroker;
    const connect = (port: number, opts: mqtt.IClientOptions = {}) =>
      mqtt.connectAsync(`mqtts://127.0.0.1:${port}`, { ca: broker.caPem, reconnectPeriod: 0, connectTimeout: 5000, protocolVersion: 5, ...opts });

    it('starts mosquitto: mTLS round trip on tlsPort, no-cert client refused there, anonymous TLS on enrollPort', async () => {
      const t0 = Date.now();
      broker = await startBroker({ aclFile: 'user harness-client\ntopic readwrite h/#\n' });
      console.log(`[harness.test] broker started in ${Date.now() - t0} ms (${selectedBackend()})`);
      const client = await broker.clientCa.issue({ cn: 'harness-client', clientAuth: true });
      const ok = await connect(broker.tlsPort, { cert: client.certPem, key: client.keyPem! });
      try {
        const got = new Promise<string>((r) => ok.on('message', (_t, p) => r(p.toString())));
        await ok.subscribeAsync('h/t', { qos: 1 });
        await ok.publishAsync('h/t', 'round trip', { qos: 1 });
        expect(await got).toBe('round trip');
        // ACL: a topic the user may not publish to gets PUBACK "Not authorized" (MQTT 5).
        await expect(ok.publishAsync('elsewhere/t', 'x', { qos: 1 })).rejects.toMatchObject({ code: 0x87 });
      } finally {
        await ok.endAsync();
      }
      await expect(connect(broker.tlsPort, { connectTimeout: 3000 })).rejects.toThrow();
      const anon = await connect(broker.enrollPort);
      await anon.endAsync();
    });

    it('restart keeps ports and config; stop leaves nothing running', async () => {
      const { tlsPort, enrollPort, pid } = broker;
      await broker.restart();
      expect([broker.tlsPort, broker.enrollPort]).toEqual([tlsPort, enrollPort]);
      if (pid !== undefined) expect(pidAlive(pid)).toBe(false);
      const anon = await connect(broker.enrollPort);
      await anon.endAsync();
      await broker.stop();
      await expectGone(broker, broker.tlsPort);
    });
  });

  it('startBroker: extraConfig reaches mosquitto, plainListener opens a plain anonymous listener', async () => {
    const b = await startBroker({ extraConfig: 'max_keepalive 30', plainListener: true });
    try {
      expect(b.plainPort).toBeTypeOf('number');
      expect(new Set([b.tlsPort, b.enrollPort, b.plainPort]).size).toBe(3);
      expect(readFileSync(b.configPath, 'utf8')).toContain('max_keepalive 30');
      const c = mqtt.connect(`mqtt://127.0.0.1:${b.plainPort}`, { reconnectPeriod: 0, connectTimeout: 5000, protocolVersion: 5, keepalive: 120 });
      try {
        const connack = await new Promise<mqtt.IConnackPacket>((resolve, reject) => {
          c.once('connect', resolve);
          c.once('error', reject);
        });
        // MQTT 5: the broker tells the client the keep-alive it enforces (max_keepalive).
        expect(connack.properties?.serverKeepAlive).toBe(30);
      } finally {
        await c.endAsync();
      }
    } finally {
      await b.stop();
    }
    await expectGone(b, b.tlsPort);
  });

  describe('global setup without a reachable engine', () => {
    const saved = { ...process.env };
    afterEach(() => {
      for (const k of ['DOCKER_HOST', 'TEST_BACKEND', 'TPMFLEET_TEST_IMAGE', 'TPMFLEET_TEST_RUN']) {
        if (saved[k] === undefined) delete process.env[k];
        else process.env[k] = saved[k];
      }
    });
    // A DOCKER_HOST that does not answer is "no engine" without touching the real one (if any).
    const noEngine = () => {
      process.env['DOCKER_HOST'] = `unix://${join(scratch, 'no-such-docker.sock')}`;
      delete process.env['TPMFLEET_TEST_IMAGE'];
    };

    it('TEST_BACKEND=container fails loudly', async () => {
      noEngine();
      process.env['TEST_BACKEND'] = 'container';
      await expect(globalSetup()).rejects.toThrow(/TEST_BACKEND=container: DOCKER_HOST=.* does not answer/);
    });

    it('auto falls back to local processes (one [harness] line, TEST_BACKEND=process for the workers)', async () => {
      noEngine();
      process.env['TEST_BACKEND'] = 'auto';
      const lines: string[] = [];
      const spy = vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => (lines.push(String(s)), true));
      try {
        expect(await globalSetup()).toBeUndefined();
      } finally {
        spy.mockRestore();
      }
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/^\[harness\] container backend unavailable \(DOCKER_HOST=.* does not answer\); using local processes/);
      expect(process.env['TEST_BACKEND']).toBe('process');
      expect(selectedBackend()).toBe('process');
    });
  });

  it('prepares a fresh SoftHSM2 token at the returned slot', async () => {
    const hsm = await startSoftHsm({ tokenLabel: 'harness' });
    try {
      const { stdout } = await run('softhsm2-util', ['--show-slots'], { env: { ...process.env, ...hsm.env } });
      const slot = stdout.split(/\n(?=Slot \d+)/).find((s) => s.startsWith(`Slot ${hsm.slot}\n`));
      expect(slot).toBeDefined();
      expect(slot).toMatch(/Label:\s+harness\s*$/m);
      expect(hsm.modulePath).toBe('/usr/lib/softhsm/libsofthsm2.so');
    } finally {
      await hsm.stop();
    }
  });
});
