/** Everything the harness started in this worker, so teardown can stop it even when a test failed. */
const started = new Set<{ stop(): Promise<void> }>();

export function track(s: { stop(): Promise<void> }): void {
  started.add(s);
}

export async function stopAll(): Promise<void> {
  const all = [...started].reverse();
  started.clear();
  await Promise.allSettled(all.map((s) => s.stop()));
}
