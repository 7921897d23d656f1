/**
 * Answers remembered for repeated requests, bounded by count and by bytes; the oldest go first.
 * A repeat of an evicted request is answered afresh (see OperatorCommandHandler for what that means).
 */
export class AnswerCache {
  readonly #entries = new Map<string, Buffer>();
  readonly #maxEntries: number;
  readonly #maxBytes: number;
  #bytes = 0;

  constructor(o: { maxEntries: number; maxBytes: number }) {
    this.#maxEntries = o.maxEntries;
    this.#maxBytes = o.maxBytes;
  }

  get(key: string): Buffer | undefined {
    return this.#entries.get(key);
  }

  set(key: string, answer: Buffer): void {
    const old = this.#entries.get(key);
    if (old) {
      this.#entries.delete(key);
      this.#bytes -= old.length;
    }
    this.#entries.set(key, answer);
    this.#bytes += answer.length;
    while (this.#entries.size > this.#maxEntries || (this.#bytes > this.#maxBytes && this.#entries.size > 1)) {
      const [k, v] = this.#entries.entries().next().value!;
      this.#entries.delete(k);
      this.#bytes -= v.length;
    }
  }

  get size(): number {
    return this.#entries.size;
  }
}
