import type { Clock } from '../../../common/clock.js';
import { isCodedError } from '../../../common/coded-error.js';
import { Topics } from '../../../common/protocol/topics.js';
import type { Tpm } from '../../../native/lib/tpm.js';
import type { AgentRuntimeConfig } from '../agent-config.js';
import type { BootstrapConfig } from '../config.js';
import { CHECK_ORDER, fail, ok, warn, type CheckResult } from './check-result.js';
import { judgeAgainstFloor, judgeSkew } from './clock-check.js';
import { checkCrl } from './crl-check.js';
import { probeDeviceSession } from './device-session.js';
import { loadDeviceView, type DeviceView } from './device-view.js';
import { checkCertificate, checkIdentityKey } from './identity-checks.js';
import { probeListener, type ListenerProbe } from './listener-probe.js';
import { checkTpm } from './tpm-check.js';

export interface CheckContext {
  readonly bootstrap: BootstrapConfig;
  readonly dataDir: string;
  readonly config: AgentRuntimeConfig;
  readonly clock: Clock;
  /** Bound on each network or TPM step. */
  readonly timeoutMs: number;
  readonly openTpm?: (tcti: string) => Promise<Tpm>;
}

export interface CheckReport {
  readonly agentRunning: boolean;
  readonly checks: readonly CheckResult[];
}

/**
 * Runs every check once, in CHECK_ORDER. A check that depends on another's subject does not pile a
 * second failure on it: the device session (mutual TLS + clock check) is opened only with a reachable
 * TPM, a key that matches an unexpired certificate, and the agent stopped; otherwise the device
 * listener gets a server-authenticated handshake only and the clock is judged against the clock floor.
 */
export async function runChecks(c: CheckContext): Promise<CheckReport> {
  const b = c.bootstrap;
  const tpm = await checkTpm(b.tcti, { timeoutMs: c.timeoutMs, ...(c.openTpm ? { open: c.openTpm } : {}) });
  const now = c.clock.now();
  let view: DeviceView;
  let key: CheckResult;
  let certificate: CheckResult;
  let crl: CheckResult;
  try {
    view = await loadDeviceView({ dataDir: c.dataDir, bootstrap: b, crlGraceSec: c.config.revocation.graceSec, clock: c.clock });
    key = checkIdentityKey(view);
    certificate = checkCertificate(view, { now, budget: c.config.offlineBudget, deviceId: b.deviceId });
    crl = checkCrl(view, { now });
  } catch (e) {
    const why = `${isCodedError(e) ? `${e.code}: ` : ''}${(e as Error).message}`;
    return finish(false, [
      tpm,
      fail('identity-key', 'CHECK_STATE_UNREADABLE', why),
      fail('certificate', 'CHECK_STATE_UNREADABLE', why),
      ...Object.values(await network(c, b.trustBundle, { run: false, why: 'the agent state is unreadable' }, now, undefined)),
      fail('crl', 'CHECK_STATE_UNREADABLE', why),
    ]);
  }

  const id = view.identity;
  let session: SessionPlan;
  if (view.agentRunning) session = { run: false, why: 'the agent is running and holds the device session (a second one would take it over), so the fleet was not asked', expected: true };
  else if (!id?.keyBlobs) session = { run: false, why: 'no identity to connect with' };
  else if (tpm.result === 'fail') session = { run: false, why: 'the TPM is not reachable' };
  else if (key.result !== 'ok') session = { run: false, why: 'the identity key does not match its certificate' };
  else if (certificate.result === 'fail') session = { run: false, why: `the certificate is not usable (${certificate.code})` };
  else session = { run: true };
  const net = await network(c, view.trustBundle, session, now, view);
  return finish(view.agentRunning, [tpm, net.key ?? key, certificate, net.clock, crl, net.enroll, net.device]);
}

type SessionPlan = { readonly run: true } | { readonly run: false; readonly why: string; readonly expected?: boolean };

interface NetworkResults {
  readonly clock: CheckResult;
  readonly enroll: CheckResult;
  readonly device: CheckResult;
  /** Replaces the identity-key result when the TPM would not load the key. */
  readonly key?: CheckResult;
}

async function network(c: CheckContext, trust: readonly string[], plan: SessionPlan, now: number, view: DeviceView | undefined): Promise<NetworkResults> {
  const b = c.bootstrap;
  const [enrollProbe, deviceProbe] = await Promise.all([probeListener(b.enrollUrl, trust, c.timeoutMs), probeListener(b.deviceUrl, trust, c.timeoutMs)]);
  const enroll = listenerResult('enroll-listener', b.enrollUrl, enrollProbe, 'server certificate verified');
  const floor = view?.clockFloor;
  if (deviceProbe.kind !== 'ok') {
    return { clock: judgeAgainstFloor(now, floor, 'the device listener is not reachable, so the fleet was not asked', false), enroll, device: listenerResult('device-listener', b.deviceUrl, deviceProbe, '') };
  }
  const server = `server certificate verified (${deviceProbe.subject}, ${deviceProbe.protocol})`;
  if (!plan.run || !view?.identity?.keyBlobs) {
    const why = plan.run ? 'no identity to connect with' : plan.why;
    const expected = !plan.run && plan.expected === true;
    return { clock: judgeAgainstFloor(now, floor, why, expected), enroll, device: ok('device-listener', `${b.deviceUrl}: ${server}; mutual TLS not tried: ${why}`) };
  }
  const id = view.identity;
  const s = await probeDeviceSession({
    tcti: b.tcti,
    url: b.deviceUrl,
    deviceId: b.deviceId,
    topics: new Topics(b.baseTopic ?? 'fleet/v1'),
    certificate: id.certificate,
    chain: view.caCertificates,
    key: id.keyBlobs!,
    trustBundle: trust,
    clock: c.clock,
    timeoutMs: c.timeoutMs,
    ...(c.openTpm ? { openTpm: c.openTpm } : {}),
  });
  switch (s.kind) {
    case 'connected': {
      const clock = s.sample ? judgeSkew(s.sample) : warn('clock', 'CHECK_CLOCK_NO_REPLY', s.noReply ?? 'no answer');
      return { clock, enroll, device: ok('device-listener', `${b.deviceUrl}: ${server}; mutual TLS as ${b.deviceId} with the TPM key`) };
    }
    case 'refused':
      return {
        clock: judgeAgainstFloor(now, floor, 'the device listener refused the identity, so the fleet was not asked', false),
        enroll,
        device: fail('device-listener', 'CHECK_DEVICE_REFUSED', `${b.deviceUrl}: ${server}, but it refused certificate ${id.serial}: ${s.message}`),
      };
    case 'key':
      return {
        clock: judgeAgainstFloor(now, floor, 'the identity key did not load, so the fleet was not asked', false),
        enroll,
        device: ok('device-listener', `${b.deviceUrl}: ${server}; mutual TLS not tried: the identity key did not load`),
        key: fail('identity-key', 'CHECK_KEY_UNLOADABLE', `the TPM refused to load the stored identity key: ${s.code}: ${s.message}`),
      };
    case 'network':
      return {
        clock: judgeAgainstFloor(now, floor, 'the device session was lost, so the fleet was not asked', false),
        enroll,
        device: fail('device-listener', 'CHECK_LISTENER_DOWN', `${b.deviceUrl}: ${s.code}: ${s.message}`),
      };
  }
}

function listenerResult(name: 'enroll-listener' | 'device-listener', url: string, p: ListenerProbe, okDetail: string): CheckResult {
  switch (p.kind) {
    case 'ok':
      return ok(name, `${url}: ${okDetail} (${p.subject}, ${p.protocol}, expires ${p.notAfter})`);
    case 'down':
      return fail(name, 'CHECK_LISTENER_DOWN', `${url}: ${p.message}`);
    case 'untrusted':
      return fail(name, 'CHECK_LISTENER_UNTRUSTED', `${url}: ${p.message}`);
    case 'tls':
      return fail(name, 'CHECK_LISTENER_TLS_FAILED', `${url}: ${p.message}`);
  }
}

function finish(agentRunning: boolean, checks: CheckResult[]): CheckReport {
  return { agentRunning, checks: [...checks].sort((x, y) => CHECK_ORDER.indexOf(x.name) - CHECK_ORDER.indexOf(y.name)) };
}
