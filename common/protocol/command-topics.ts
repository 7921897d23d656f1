import { CodedError } from '../coded-error.js';
import type { Topics } from './topics.js';

/**
 * Request/reply command topics of a role whose members the broker tells apart by certificate CN
 * (`role:operator:<id>`, `role:station:<id>`):
 *   `<base>/<folder>/<id>/commands/<command>`        member → bridge
 *   `<base>/<folder>/<id>/commands/<command>/reply`  bridge → member
 * The ACL lets each member write only its own command topics and read only its own replies.
 */

/** Member ids go into topics and ACL lines: no MQTT wildcards, no '/'. */
export const ROLE_MEMBER_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;

export interface CommandTopicFamily<C extends string> {
  isId(id: string): boolean;
  /** The command topic of member `id` and its reply topic; throws the family's invalid-id code. */
  topics(topics: Topics, id: string, command: C): { command: string; reply: string };
  /** Subscription filter matching `command` from every member (the bridge's side). */
  all(topics: Topics, command: C): string;
  /** Splits an incoming command topic into member id and command; undefined for anything else (replies included). */
  parse(topics: Topics, topic: string): { id: string; command: C } | undefined;
}

export function commandTopicFamily<C extends string, Code extends string>(folder: string, commands: readonly C[], invalidIdCode: Code, what: string): CommandTopicFamily<C> {
  const isId = (id: string) => ROLE_MEMBER_ID_PATTERN.test(id);
  const isCommand = (c: string): c is C => (commands as readonly string[]).includes(c);
  return {
    isId,
    topics(t, id, command) {
      if (!isId(id)) throw new CodedError<Code>(invalidIdCode, `invalid ${what} id ${JSON.stringify(id)}`);
      const topic = `${t.base}/${folder}/${id}/commands/${command}`;
      return { command: topic, reply: `${topic}/reply` };
    },
    all(t, command) {
      return `${t.base}/${folder}/+/commands/${command}`;
    },
    parse(t, topic) {
      const prefix = `${t.base}/${folder}/`;
      if (!topic.startsWith(prefix)) return undefined;
      const parts = topic.slice(prefix.length).split('/');
      if (parts.length !== 3 || parts[1] !== 'commands') return undefined;
      const [id, , command] = parts as [string, string, string];
      if (!isId(id) || !isCommand(command)) return undefined;
      return { id, command };
    },
  };
}
