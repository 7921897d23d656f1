import { describe, expect, it } from 'vitest';
import { isValidTopicFilter, isValidTopicName, topicMatches } from './topic-match.js';

describe('topicMatches', () => {
  const table: Array<[filter: string, topic: string, expected: boolean]> = [
    ['a/b/c', 'a/b/c', true],
    ['a/b/c', 'a/b', false],
    ['a/b', 'a/b/c', false],
    ['a/b/c', 'a/B/c', false],
    ['a/+/c', 'a/b/c', true],
    ['a/+/c', 'a/b/d', false],
    ['a/+', 'a/', true],
    ['a/+', 'a', false],
    ['a/+', 'a/b/c', false],
    ['+/+', '/x', true],
    ['+', 'a', true],
    ['+', 'a/b', false],
    ['#', 'a', true],
    ['#', 'a/b/c', true],
    ['#', '/', true],
    ['a/#', 'a', true],
    ['a/#', 'a/b', true],
    ['a/#', 'a/b/c/d', true],
    ['a/#', 'ab', false],
    ['a/#', 'b/a', false],
    ['a/+/#', 'a/b', true],
    ['a/+/#', 'a', false],
    ['fleet/v1/devices/+/status', 'fleet/v1/devices/dev-1/status', true],
    ['fleet/v1/devices/+/status', 'fleet/v1/devices/dev-1/enroll', false],
    ['fleet/v1/devices/+/enroll/#', 'fleet/v1/devices/d/enroll/challenge', true],
    // $-topics are invisible to leading wildcards
    ['#', '$SYS/broker/uptime', false],
    ['+/broker/uptime', '$SYS/broker/uptime', false],
    ['+/#', '$SYS/x', false],
    ['$SYS/#', '$SYS/broker/uptime', true],
    ['$SYS/+/uptime', '$SYS/broker/uptime', true],
    ['a/#', 'a/$x', true],
    // shared subscriptions match like their inner filter
    ['$share/g/a/+', 'a/b', true],
    ['$share/g/#', 'a/b', true],
    ['$share/g/#', '$SYS/x', false],
    ['$share/g/a/+', '$share/g/a/b', false],
  ];
  it.each(table)('%s vs %s -> %s', (filter, topic, expected) => {
    expect(topicMatches(filter, topic)).toBe(expected);
  });
});

describe('topic validation', () => {
  it('accepts publishable names and rejects wildcards', () => {
    expect(isValidTopicName('a/b')).toBe(true);
    expect(isValidTopicName('/')).toBe(true);
    expect(isValidTopicName('')).toBe(false);
    expect(isValidTopicName('a/+')).toBe(false);
    expect(isValidTopicName('a/#')).toBe(false);
    expect(isValidTopicName('a\u0000b')).toBe(false);
  });
  it('accepts well-formed filters only', () => {
    for (const f of ['a', 'a/+/c', '#', 'a/#', '+', '+/+', '$share/g/a/#', '$SYS/#']) expect(isValidTopicFilter(f), f).toBe(true);
    for (const f of ['', 'a/#/c', 'a#', 'a/b+', '#/a', '$share/g', '$share//a', '$share/g+/a']) expect(isValidTopicFilter(f), f).toBe(false);
  });
});
