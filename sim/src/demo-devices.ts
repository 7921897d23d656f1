import type { Agent, AgentLogger, AgentStatus } from '../../agent/src/agent.js';
import type { DeviceRow, LiveTable } from './demo-table.js';

/**
 * Feeds the live table from the demo's agents. Each agent gets a logger from `loggerFor()` at
 * construction: its log lines become the row's "last event" (nothing is printed), and every state
 * change or log line refreshes the row from `agent.status()` (state, serial, expiry, slot, CRL number).
 */
type Fields = Readonly<Record<string, unknown>>;

const str = (v: unknown): string | undefined => (typeof v === 'string' || typeof v === 'number' ? String(v) : undefined);
const short = (serial: unknown): string => (str(serial) ?? '?').slice(0, 8);

/**
 * The agent's log message as a short event for the table; undefined for lines that are noise here
 * (every failed reconnect attempt while the broker is down logs a transport error).
 */
export function eventText(level: 'info' | 'warn' | 'error', msg: string, f: Fields): string | undefined {
  switch (msg) {
    case 'transport error':
    case 'could not finish setting up the connection':
      return undefined;
    case 'enrolled':
    case 're-attested':
      return `${msg}: certificate ${short(f['serial'])}… in slot ${str(f['slot']) ?? '?'}`;
    case 'online':
      return 'online over mutual TLS (key in the TPM)';
    case 'CRL updated':
      return `holds CRL #${str(f['crlNumber']) ?? '?'} (${str(f['revokedSerials']) ?? '?'} revoked)`;
    case 'trust bundle updated':
      return `trust bundle v${str(f['version']) ?? '?'}`;
    case 'fleet command received':
      return `got ${str(f['command']) ?? 'a command'} from ${str(f['by']) ?? 'the fleet'}`;
    case 'running a fleet command':
      return `running ${str(f['command']) ?? 'a fleet command'}`;
    case 'rotation key created':
      return `new key in the TPM (slot ${str(f['slot']) ?? '?'})`;
    case 'rotation certificate issued':
      return `new certificate ${short(f['serial'])}…`;
    case 'rotated':
      return `rotated: ${short(f['previous'])}… → ${short(f['serial'])}…`;
    case 'connection to the fleet lost; reconnecting':
      return 'connection lost; reconnecting';
    case 'connection to the fleet restored':
      return `reconnected after ${((Number(f['outageMs']) || 0) / 1000).toFixed(1)} s offline`;
    case 'the fleet CRL lists our certificate; stopping its use':
      return 'the CRL lists its own certificate';
    case 'this device is revoked; stopped using its identity':
      return 'revoked: cut off, identity no longer used';
    default: {
      const code = str(f['code']);
      return level === 'info' || code === undefined ? msg : `${msg} [${code}]`;
    }
  }
}

/** The table row for a device, from the agent's status (state `provisioned` before it ever started). */
export function rowOf(s: AgentStatus, started: boolean, event: string | undefined): DeviceRow {
  return {
    id: s.deviceId,
    state: started ? s.state : 'provisioned',
    ...(s.certSerial === undefined ? {} : { serial: s.certSerial }),
    ...(s.certNotAfter === undefined ? {} : { notAfter: s.certNotAfter }),
    ...(s.slot === undefined ? {} : { slot: s.slot }),
    ...(s.crl === undefined ? {} : { crl: `#${s.crl.crlNumber}` }),
    ...(event === undefined ? {} : { event }),
  };
}

export class DemoDevices {
  readonly #table: LiveTable;
  readonly #agents = new Map<string, Agent>();
  readonly #events = new Map<string, string>();
  readonly #started = new Set<string>();

  constructor(table: LiveTable) {
    this.#table = table;
  }

  /** A row before the device has an agent (the station just provisioned it). */
  provisioned(deviceId: string, event: string): void {
    this.#events.set(deviceId, event);
    this.#table.set({ id: deviceId, state: 'provisioned', event });
  }

  loggerFor(deviceId: string): AgentLogger {
    const log = (level: 'info' | 'warn' | 'error') => (obj: object, msg: string) => {
      const text = eventText(level, msg, obj as Fields);
      if (text === undefined) return;
      this.#events.set(deviceId, text);
      this.refresh(deviceId);
    };
    return { info: log('info'), warn: log('warn'), error: log('error') };
  }

  /** Follows `agent`: its row is refreshed on every state change. */
  attach(agent: Agent): void {
    this.#agents.set(agent.deviceId, agent);
    agent.onStateChange((s) => {
      if (s !== 'stopped') this.#started.add(agent.deviceId);
      this.refresh(agent.deviceId);
    });
  }

  refresh(deviceId: string): void {
    const agent = this.#agents.get(deviceId);
    if (!agent) return;
    this.#table.set(rowOf(agent.status(), this.#started.has(deviceId), this.#events.get(deviceId)));
  }
}
