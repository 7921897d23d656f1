/**
 * MQTT topic filter matching (MQTT 5 §4.7): `+` matches exactly one level (possibly empty), a trailing
 * `#` matches the parent level and everything below, and topics starting with `$` are never matched by
 * a filter whose first level is a wildcard. A shared-subscription filter (`$share/<group>/<filter>`)
 * matches like its inner filter.
 */
export function topicMatches(filter: string, topic: string): boolean {
  const f = stripShare(filter).split('/');
  const t = topic.split('/');
  if (topic.startsWith('$') && (f[0] === '+' || f[0] === '#')) return false;
  for (let i = 0; i < f.length; i++) {
    const level = f[i];
    if (level === '#') return i === f.length - 1;
    if (i >= t.length) return false;
    if (level !== '+' && level !== t[i]) return false;
  }
  return f.length === t.length;
}

/** A topic a message may be published to: non-empty, no wildcards, no NUL, at most 65535 bytes. */
export function isValidTopicName(topic: string): boolean {
  return topic.length > 0 && !/[+#\u0000]/.test(topic) && Buffer.byteLength(topic) <= 0xffff;
}

/** A subscription filter: `#` only as the whole last level, `+` only as a whole level. */
export function isValidTopicFilter(filter: string): boolean {
  if (filter.length === 0 || filter.includes('\u0000') || Buffer.byteLength(filter) > 0xffff) return false;
  if (filter.startsWith('$share/')) {
    const rest = filter.slice('$share/'.length);
    const slash = rest.indexOf('/');
    if (slash <= 0 || /[+#]/.test(rest.slice(0, slash))) return false;
    return isValidTopicFilter(rest.slice(slash + 1));
  }
  const levels = filter.split('/');
  return levels.every((level, i) => {
    if (level === '#') return i === levels.length - 1;
    if (level === '+') return true;
    return !/[+#]/.test(level);
  });
}

function stripShare(filter: string): string {
  if (!filter.startsWith('$share/')) return filter;
  const rest = filter.slice('$share/'.length);
  const slash = rest.indexOf('/');
  return slash < 0 ? filter : rest.slice(slash + 1);
}
