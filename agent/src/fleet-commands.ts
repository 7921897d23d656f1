import { isCodedError } from '../../common/coded-error.js';
import { decode, type DeviceCommandName } from '../../common/protocol/messages.js';
import type { Topics } from '../../common/protocol/topics.js';
import type { Transport } from '../../common/transport/transport.js';
import type { AgentStore } from './store.js';

/**
 * Fleet commands for this device (`<base>/devices/<id>/commands`, retained, from an operator through
 * the bridge): `rotate-now` and `reattest`. Each command id runs once, across restarts: the ids taken
 * are kept in the store (the newest HANDLED_KEPT; the retained message repeats on every connection).
 * A command whose `expiresAt` has passed on the judged clock is dropped, and so is one that arrives
 * while another is still scheduled for a different id (the newest retained command wins: the bridge
 * replaced the older one). The action is scheduled at a random point within `jitterSec` of receipt, so
 * a wave of commands does not arrive at the bridge at once; the schedule survives a restart.
 */
export interface FleetCommandsHost {
  readonly topics: Topics;
  readonly deviceId: string;
  /** Now for validity decisions (clock floor applied). */
  judgedNow(): number;
  /** Jitter source in [0, 1). */
  random(): number;
  /** A command is due at `at` (judged clock): the agent acts at its next step on or after it. */
  schedule(command: ScheduledCommand): void;
  log(level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>): void;
}

export interface ScheduledCommand {
  readonly id: string;
  readonly command: DeviceCommandName;
  readonly at: number;
  readonly by: string;
}

interface Ledger {
  readonly handled: readonly string[];
  readonly scheduled?: ScheduledCommand;
}

const LEDGER_KEY = 'ledger';
/** Command ids remembered; older retained commands are replaced by the bridge long before this. */
export const HANDLED_KEPT = 64;

type Sublevel = ReturnType<AgentStore['sublevel']>;

export class FleetCommands {
  readonly #h: FleetCommandsHost;
  readonly #db: Sublevel;
  #ledger: Ledger = { handled: [] };
  #work: Promise<void> = Promise.resolve();

  constructor(host: FleetCommandsHost, db: Sublevel) {
    this.#h = host;
    this.#db = db;
  }

  /** Loads the ledger; a command scheduled before a restart is handed to the host again. */
  async open(): Promise<void> {
    const raw = (await this.#db.get(LEDGER_KEY)) as Ledger | undefined;
    if (raw && Array.isArray(raw.handled) && raw.handled.every((x) => typeof x === 'string')) {
      this.#ledger = raw;
      if (raw.scheduled) this.#h.schedule(raw.scheduled);
    } else if (raw !== undefined) {
      this.#h.log('warn', 'the fleet command ledger was unreadable and is reset');
      await this.#db.put(LEDGER_KEY, this.#ledger);
    }
  }

  /** On every (new) device connection: the retained command, if any, arrives right after. */
  async subscribe(t: Transport): Promise<void> {
    await t.subscribe(this.#h.topics.device(this.#h.deviceId, 'command'), (m) => {
      this.#work = this.#work.then(() => this.#onMessage(m.payload)).catch((e: unknown) => {
        this.#h.log('warn', 'could not take a fleet command', { code: isCodedError(e) ? e.code : undefined });
      });
    });
  }

  /** The agent starts acting on the scheduled command: it is no longer pending. */
  async started(id: string): Promise<void> {
    this.#work = this.#work.then(async () => {
      if (this.#ledger.scheduled?.id !== id) return;
      this.#ledger = { handled: this.#ledger.handled };
      await this.#db.put(LEDGER_KEY, this.#ledger);
    });
    await this.#work;
  }

  async #onMessage(payload: Buffer): Promise<void> {
    // An empty message clears the retained command (the fleet withdrew it, e.g. an aborted campaign).
    if (payload.length === 0) return;
    let msg;
    try {
      msg = decode('command', payload);
    } catch (e) {
      this.#h.log('warn', 'ignored a malformed fleet command', { code: isCodedError(e) ? e.code : undefined });
      return;
    }
    const id = msg.requestId;
    if (this.#ledger.handled.includes(id)) return;
    const handled = [...this.#ledger.handled, id].slice(-HANDLED_KEPT);
    const now = this.#h.judgedNow();
    const b = msg.body;
    if (b.expiresAt <= now) {
      this.#ledger = { ...this.#ledger, handled };
      await this.#db.put(LEDGER_KEY, this.#ledger);
      this.#h.log('warn', 'ignored an expired fleet command', { id, command: b.command, expiresAt: b.expiresAt });
      return;
    }
    const at = now + Math.floor(this.#h.random() * b.jitterSec * 1000);
    const scheduled: ScheduledCommand = { id, command: b.command, at, by: b.by };
    this.#ledger = { handled, scheduled };
    await this.#db.put(LEDGER_KEY, this.#ledger);
    this.#h.log('info', 'fleet command received', { id, command: b.command, by: b.by, inMs: at - now });
    this.#h.schedule(scheduled);
  }
}
