/**
 * A private epoll set over many sockets, for a receiver with many senders:
 * waiting costs one registration in the poller whatever the number of
 * connections, and a look names the ones that are ready instead of reading
 * each in turn. Level-triggered, so a connection with frames left is named
 * again, and the kernel's ready list rotates, so every one gets its turn.
 *
 * @module
 */

import { OwnedFd } from "./ffi/fd.ts";
import { check, ERRNO, errno, systemError } from "./ffi/errors.ts";
import { EPOLL, EPOLL_EVENT } from "./ffi/layout.ts";
import { libc } from "./ffi/libc.ts";
import { pointerOf, stableBuffer } from "./ffi/mem.ts";

/** The most ready members one look reports. */
const MAX_READY = 64;

const ctl = new Uint8Array(new ArrayBuffer(64));
const ctlView = new DataView(ctl.buffer);

/** One epoll set of sockets, each standing for an item of type `T`. */
export class ConnSet<T> {
  #fd: OwnedFd;
  #items = new Map<number, T>();
  #tokens = new Map<T, number>();
  #next = 1;
  #events = stableBuffer(MAX_READY * EPOLL_EVENT.size);
  #view = new DataView(this.#events);
  #pointer = pointerOf(this.#events);

  /** @param what The owner's name, for error messages. */
  constructor(what: string) {
    this.#fd = new OwnedFd(
      check("epoll_create1", libc().epoll_create1(EPOLL.CLOEXEC)),
      what,
    );
  }

  /** Adds `fd`, which stands for `item`. */
  add(fd: number, item: T): void {
    const token = this.#next++;
    ctlView.setUint32(EPOLL_EVENT.events, EPOLL.IN | EPOLL.RDHUP, true);
    ctlView.setUint32(EPOLL_EVENT.data, token % 0x1_0000_0000, true);
    ctlView.setUint32(
      EPOLL_EVENT.data + 4,
      Math.floor(token / 0x1_0000_0000),
      true,
    );
    if (libc().epoll_ctl(this.#fd.fd, EPOLL.CTL_ADD, fd, ctl) === -1) {
      throw systemError("epoll_ctl", errno(), `fd ${fd}`);
    }
    this.#items.set(token, item);
    this.#tokens.set(item, token);
  }

  /** Takes `fd` (standing for `item`) out; call before closing it. */
  remove(fd: number, item: T): void {
    const token = this.#tokens.get(item);
    if (token === undefined) return;
    this.#tokens.delete(item);
    this.#items.delete(token);
    if (libc().epoll_ctl(this.#fd.fd, EPOLL.CTL_DEL, fd, ctl) === -1) {
      const code = errno();
      if (code !== ERRNO.ENOENT && code !== ERRNO.EBADF) {
        throw systemError("epoll_ctl", code, `fd ${fd}`);
      }
    }
  }

  /** The items whose sockets are ready now (at most 64), never waiting. */
  ready(): T[] {
    const lib = libc();
    let n: number;
    for (;;) {
      n = lib.epoll_wait(this.#fd.fd, this.#pointer, MAX_READY, 0);
      if (n >= 0) break;
      const code = errno();
      if (code !== ERRNO.EINTR) throw systemError("epoll_wait", code);
    }
    const out: T[] = [];
    for (let i = 0; i < n; i++) {
      const at = i * EPOLL_EVENT.size + EPOLL_EVENT.data;
      const token = this.#view.getUint32(at, true) +
        this.#view.getUint32(at + 4, true) * 0x1_0000_0000;
      const item = this.#items.get(token);
      if (item !== undefined) out.push(item);
    }
    return out;
  }

  /** Waits until some member may be ready. */
  wait(signal?: AbortSignal): Promise<void> {
    return this.#fd.wait("read", signal);
  }

  /** Lets waits keep the process alive (the default). */
  ref(): void {
    this.#fd.ref();
  }

  /** Lets the process exit while a wait is pending. */
  unref(): void {
    this.#fd.unref();
  }

  /** Closes the set (not its members). */
  close(): void {
    this.#items.clear();
    this.#tokens.clear();
    this.#fd.close();
  }
}
