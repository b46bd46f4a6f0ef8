/**
 * Buffers for the messages a shmQueue receiver returns.
 *
 * A new typed array in Deno costs an allocation through `malloc` and a
 * backing store: `new Uint8Array(n)` or `slice()` took 1.3 µs for 64 bytes
 * and 2.5 µs for 1 KiB on the machines this was measured on, against 0.03 µs
 * for a view. A 64 B shmQueue round trip spent a third of its time there. So a
 * small message is copied into a view of a block instead, as Node's `Buffer`
 * pool does: its `buffer` holds other small messages too, and it keeps the
 * block alive while it lives.
 *
 * Each receiver has blocks of its own, so a block only ever holds messages
 * from one queue, that is from one peer: cloning a view (`structuredClone()`,
 * `postMessage()` without a transfer list), which copies the whole block,
 * carries no other peer's bytes, and transferring one empties no other
 * queue's messages.
 *
 * @module
 */

/** A message of at most this many bytes gets a view of a block. */
export const SMALL_MESSAGE_BYTES = 1024;
/** Largest block: 16 messages of the largest small size. */
export const BLOCK_BYTES = 16 * SMALL_MESSAGE_BYTES;
/** Smallest block. */
const MIN_BLOCK_BYTES = 64;

/** One receiver's blocks: the current one, and how much of it is taken. */
export class FreshBytes {
  #block = new Uint8Array(0);
  #used = 0;
  #blockBytes: number;

  /**
   * @param largest The largest message the receiver takes: a block holds 16
   * of the largest small one it can get, so a queue of tiny messages does
   * not hold 16 KiB for them.
   */
  constructor(largest: number) {
    const small = Math.min(SMALL_MESSAGE_BYTES, Math.max(0, largest));
    this.#blockBytes = Math.max(MIN_BLOCK_BYTES, 16 * ((small + 7) & ~7));
  }

  /**
   * A zeroed buffer of `n` bytes for a message: a view of this receiver's
   * current block when `n` is at most {@linkcode SMALL_MESSAGE_BYTES} and
   * fits a block, otherwise a buffer of its own. Views start at multiples of
   * 8, and none overlaps another.
   */
  take(n: number): Uint8Array<ArrayBuffer> {
    if (n > SMALL_MESSAGE_BYTES || 16 * n > this.#blockBytes) {
      return new Uint8Array(n);
    }
    // No block yet, or a transferred view detached it (its byteLength reads
    // 0 then), or it is full: a new block.
    if (
      this.#block.byteLength === 0 || this.#used + n > this.#block.byteLength
    ) {
      this.#block = new Uint8Array(this.#blockBytes);
      this.#used = 0;
    }
    const at = this.#used;
    this.#used += (n + 7) & ~7;
    return this.#block.subarray(at, at + n);
  }

  /** Lets the current block go (views handed out keep it alive). */
  release(): void {
    this.#block = new Uint8Array(0);
    this.#used = 0;
  }
}
