import { afterAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { freePorts } from '../harness/ports.js';

/**
 * docs/deployment.md, run as written: every `sh` block, in order, in one bash with `set -euo pipefail`,
 * from the repository root, each program its own process (bridge, mosquitto, station, agent, operator,
 * swtpm). Only the directory and the ports are chosen here (the page reads them from the environment
 * with defaults), so the documented commands cannot drift from the code.
 */
const ROOT = resolve(import.meta.dirname, '../..');
const DOC = join(ROOT, 'docs/deployment.md');

/** The page's `sh` blocks with the heading of the section each is in. */
function shBlocks(markdown: string): { section: string; code: string }[] {
  const out: { section: string; code: string }[] = [];
  let section = '';
  let code: string[] | undefined;
  for (const line of markdown.split('\n')) {
    if (code) {
      if (line.startsWith('```')) {
        out.push({ section, code: code.join('\n') });
        code = undefined;
      } else code.push(line);
    } else if (line.startsWith('## ')) section = line.slice(3).trim();
    else if (line.trim() === '```sh') code = [];
  }
  if (code) throw new Error(`unterminated sh block in ${section}`);
  return out;
}

function bash(script: string, env: NodeJS.ProcessEnv, timeoutMs: number): Promise<{ code: number | null; out: string }> {
  return new Promise((res, rej) => {
    const child = spawn('bash', ['-c', `set -euo pipefail\n${script}`], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', rej);
    child.on('close', (code) => {
      clearTimeout(timer);
      res({ code, out });
    });
  });
}

/** pids the page's processes left in pid files under `dir`. */
function pidFiles(dir: string): string[] {
  const found: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name));
      else if (e.name.endsWith('.pid')) found.push(join(d, e.name));
    }
  };
  if (existsSync(dir)) walk(dir);
  return found;
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('docs/deployment.md, run literally', () => {
  const fleet = mkdtempSync(join(tmpdir(), 'docs-deploy-'));
  // mosquitto drops to its own user, which must be able to enter the directory (mkdtemp makes it 0700).
  chmodSync(fleet, 0o755);

  afterAll(() => {
    for (const f of pidFiles(fleet)) {
      const pid = Number(readFileSync(f, 'utf8').trim());
      if (pid > 0 && alive(pid)) process.kill(pid, 'SIGKILL');
    }
    rmSync(fleet, { recursive: true, force: true });
  });

  it('brings a device online over mutual TLS, each program its own process, and stops them all', { timeout: 180_000 }, async () => {
    const blocks = shBlocks(readFileSync(DOC, 'utf8'));
    expect(blocks.length).toBeGreaterThan(6);
    const stopping = blocks.filter((b) => b.section === 'Stopping');
    expect(stopping).toHaveLength(1);
    const [enroll, device, tpm] = [await freePorts(1), await freePorts(1), await freePorts(2)];
    const env: NodeJS.ProcessEnv = { ...process.env, FLEET: fleet, ENROLL_PORT: String(enroll), DEVICE_PORT: String(device), TPM_PORT: String(tpm), LOG_FORMAT: 'json' };
    delete env.LOG_LEVEL;

    // Everything but the last section, as one script (the page's variables carry over between blocks).
    const steps = blocks.filter((b) => b.section !== 'Stopping').map((b) => `# --- ${b.section}\n${b.code}`).join('\n');
    const r = await bash(steps, env, 150_000);
    const logs = () =>
      ['bridge.log', 'mosquitto.log', 'agent.log'].map((f) => (existsSync(join(fleet, f)) ? `--- ${f}\n${readFileSync(join(fleet, f), 'utf8').slice(-3000)}` : '')).join('\n');
    expect(r.code, `${r.out}\n${logs()}`).toBe(0);
    expectDeviceOnline(r.out);

    // Stopping, as written: every process the page started is gone.
    const pids = pidFiles(fleet).map((f) => Number(readFileSync(f, 'utf8').trim()));
    expect(pids.length).toBeGreaterThanOrEqual(4);
    const s = await bash(stopping[0]!.code, env, 30_000);
    expect(s.code, s.out).toBe(0);
    const deadline = Date.now() + 15_000;
    while (pids.some(alive) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 100));
    expect(pids.filter(alive)).toEqual([]);
  });
});

/** What the page shows at its end: the device's retained status (mosquitto_sub), online, and the operator CLI's view of it. */
function expectDeviceOnline(out: string): void {
  const status = out.split('\n').find((l) => l.startsWith('{') && l.includes('"deviceId":"gw-0001"'));
  expect(status, out).toBeDefined();
  expect(JSON.parse(status!).body).toMatchObject({ deviceId: 'gw-0001', online: true, state: 'online' });
  // The campaign: completed, its one device rotated (the table's note line).
  expect(out).toMatch(/^campaign first-rotation \(rotate\): completed, wave 1 of 1; 1 of 1 devices succeeded, 0 failed$/m);
  // `operator devices --owner plant-a`: one table row; `operator device gw-0001 --json`: the last output.
  expect(out).toMatch(/^gw-0001\s+enrolled\s+online\s+yes\s+plant-a\s+edge-gw\s/m);
  const view = JSON.parse(out.slice(out.lastIndexOf('\n{\n') + 1)) as { device: { deviceId: string; online: boolean; certSerial: string }; certificate: { serial: string } };
  expect(view.device).toMatchObject({ deviceId: 'gw-0001', online: true });
  expect(view.certificate.serial).toBe(JSON.parse(status!).body.certSerial);
  // After the campaign, the device's certificate is a rotation's.
  expect(view.certificate).toMatchObject({ kind: 'rotate', state: 'active' });
}
