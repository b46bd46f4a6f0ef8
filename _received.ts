/**
 * How endpoints that receive fds (`UnixSocket.recv()`, a channel
 * `Receiver`) make them endpoints without importing the endpoint modules,
 * several of which import theirs: `_adopt.ts`, which sits above every
 * endpoint module, hands its algorithm in here when it is evaluated. Every
 * entry point that can give out such an endpoint imports `_adopt.ts`, so
 * the algorithm is in place before any fd can arrive.
 *
 * @module
 */

/**
 * What this module knows of an endpoint: that it can be closed. (The type
 * of every endpoint, `Endpoint`, is `_adopt.ts`'s; naming it here would
 * make this module depend on every endpoint module's types.)
 */
export interface Received {
  close(): void;
}

let adopter: ((fd: number) => Received) | undefined;

/** Called once, by `_adopt.ts`. */
export function setReceivedAdopter(adopt: (fd: number) => Received): void {
  adopter = adopt;
}

/**
 * Wraps an fd this process received in the endpoint that fits it, and
 * makes it CLOEXEC; `_adopt.ts`'s `adoptFd()`.
 *
 * @throws {TypeError} When no endpoint fits the fd.
 */
export function adoptReceived(fd: number): Received {
  if (adopter === undefined) {
    // An entry point that gives out a receiving endpoint without importing
    // _adopt.ts: a bug of this package, never of the caller.
    throw new Error(
      `Cannot adopt received fd ${fd}: no endpoint adopter was loaded`,
    );
  }
  return adopter(fd);
}
