/**
 * {@linkcode SharedMemory}: memory that several processes map at once, from
 * a memfd or a POSIX shared memory name.
 *
 * @example Share a counter with a child
 * ```ts ignore
 * import { SharedMemory, spawn } from "@conduit/ipc";
 *
 * using mem = SharedMemory.create(4096);
 * const child = spawn(Deno.execPath(), {
 *   args: ["run", "--allow-ffi", "child.ts"], // fromFd(3) as SharedMemory
 *   fds: [mem],
 * });
 * await child.status;
 * console.log(Atomics.load(new Int32Array(mem.buffer), 0));
 * ```
 *
 * @module
 */

import { libc } from "../ffi/libc.ts";
import { check, closedError, errno, systemError } from "../ffi/errors.ts";
import { F, MMAP, O, SEAL, STAT } from "../ffi/layout.ts";
import { cstr } from "../ffi/mem.ts";
import { OwnedFd } from "../ffi/fd.ts";
import { registerAdopter } from "../_adopt.ts";
import { type Mapping, mapShared, retire, unmapWhenCollected } from "./_map.ts";
import {
  cancelWait,
  type Wait,
  type WaitResult,
  waitWord,
  wakeWord,
} from "./_futex.ts";

/** Options for {@linkcode SharedMemory.create}. */
export interface SharedMemoryOptions {
  /**
   * A POSIX shared memory name (`shm_open`, seen as `/dev/shm/<name>`), so
   * that unrelated processes, in any language, can open it. It is created
   * with mode 0600 and must not exist yet. Without a name the memory is an
   * anonymous memfd that travels only as an fd.
   */
  name?: string;
}

/**
 * Options for adopting an fd as {@linkcode SharedMemory}: the constructor,
 * used for fds obtained elsewhere. `fromFd()`, `UnixSocket.recv()` and
 * channel receivers adopt memory with the defaults.
 */
export interface SharedMemoryAdoptOptions extends SharedMemoryOptions {
  /**
   * Map memory whose size another process can still reduce: a POSIX shared
   * memory object (which takes no seals), or a memfd made without
   * `F_SEAL_SHRINK`. If any process shrinks the file, this process dies of
   * SIGBUS the next time it touches a page past the new end. Only for
   * memory from a process you trust. Default `false`: such memory is
   * refused with a `TypeError`.
   */
  allowShrink?: boolean;
  /**
   * The largest size to map, in bytes: the process that made the memory
   * chose its size, and mapping a huge region costs address space and
   * page tables here. Default 1 GiB; `Infinity` for no limit.
   */
  maxBytes?: number;
}

/** Largest memory adopted from another process by default: 1 GiB. */
const DEFAULT_MAX_ADOPT_BYTES = 1 << 30;

/** Options for {@linkcode SharedMemory.wait}. */
export interface SharedMemoryWaitOptions {
  /**
   * Milliseconds after which the wait ends with `"timed-out"`. Default: no
   * limit. `0` only compares.
   */
  timeout?: number;
  /** Ends the wait, rejecting with the signal's reason. */
  signal?: AbortSignal;
}

/** How {@linkcode SharedMemory.wait} ended, as `Atomics.waitAsync` says. */
export type SharedMemoryWaitResult = WaitResult;

const NAME = /^[^/\0]{1,250}$/;

function shmName(name: string, action: string): Uint8Array<ArrayBuffer> {
  if (
    typeof name !== "string" || !NAME.test(name) || name === "." ||
    name === ".."
  ) {
    throw new TypeError(
      `Cannot ${action} SharedMemory: invalid name ${
        JSON.stringify(name)
      }: 1 to 250 characters, no "/"`,
    );
  }
  return cstr(`/${name}`);
}

function checkSize(size: number, action: string): void {
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new RangeError(
      `Cannot ${action} SharedMemory: size must be a positive integer, got ${size}`,
    );
  }
}

/** The size of the file behind an fd, by `fstat`. */
export function fileSize(fd: number): number {
  const stat = new Uint8Array(STAT.size);
  check("fstat", libc().fstat(fd, stat));
  return Number(new DataView(stat.buffer).getBigInt64(STAT.fsize, true));
}

const linkBuffer = new Uint8Array(4096);

/** Where `/proc/self/fd/<fd>` points, or `undefined`. */
export function fdLink(fd: number): string | undefined {
  const n = Number(
    libc().readlink(
      cstr(`/proc/self/fd/${fd}`),
      linkBuffer,
      BigInt(linkBuffer.length),
    ),
  );
  if (n < 0) return undefined;
  return new TextDecoder().decode(linkBuffer.subarray(0, n));
}

/**
 * Creates a CLOEXEC memfd of `size` zero bytes, sealed so that its size can
 * never change: no process that maps it can be made to fault (SIGBUS) by
 * another one truncating it.
 */
export function createMemfd(size: number, label: string): number {
  const lib = libc();
  const fd = check(
    "memfd_create",
    lib.memfd_create(cstr(label), MMAP.MFD_CLOEXEC | MMAP.MFD_ALLOW_SEALING),
  );
  try {
    check("ftruncate", lib.ftruncate(fd, BigInt(size)));
    check(
      "fcntl(F_ADD_SEALS)",
      lib.fcntl(fd, F.ADD_SEALS, SEAL.SHRINK | SEAL.GROW | SEAL.SEAL),
    );
  } catch (error) {
    lib.close(fd);
    throw error;
  }
  return fd;
}

/** Whether an fd's size is sealed against shrinking (a memfd made here). */
export function sealedAgainstShrink(fd: number): boolean {
  const seals = libc().fcntl(fd, F.GET_SEALS, 0);
  return seals !== -1 && (seals & SEAL.SHRINK) !== 0;
}

/**
 * Why memory behind `fd` can shrink under a mapping, or `undefined` when it
 * is sealed against shrinking (`F_GET_SEALS` has `F_SEAL_SHRINK`; seals are
 * never removed once set).
 */
export function shrinkRisk(fd: number): string | undefined {
  const seals = libc().fcntl(fd, F.GET_SEALS, 0);
  if (seals === -1) {
    return "its file takes no seals (it is not a memfd), so its size can shrink";
  }
  if ((seals & SEAL.SHRINK) === 0) {
    return "it is not sealed against shrinking (no F_SEAL_SHRINK)";
  }
  return undefined;
}

function checkMaxBytes(maxBytes: number): number {
  if (
    maxBytes !== Infinity && (!Number.isSafeInteger(maxBytes) || maxBytes <= 0)
  ) {
    throw new RangeError(
      `Cannot map SharedMemory: maxBytes must be a positive integer or Infinity, got ${maxBytes}`,
    );
  }
  return maxBytes;
}

/**
 * Memory shared between processes: an anonymous memfd, or a POSIX shared
 * memory object by name. {@linkcode buffer} is a plain `ArrayBuffer` over the
 * mapping; writes are seen at once by every process that maps the same
 * memory. Use `Atomics` on an `Int32Array` over it for shared counters and
 * flags (they are atomic across processes). `Atomics.wait` and `notify`
 * need a `SharedArrayBuffer`; use {@linkcode wait} and {@linkcode notify}
 * instead, which work across processes.
 *
 * A memfd made by {@linkcode SharedMemory.create} is sealed at its size, so
 * no process it is handed to can truncate it under another's mapping (which
 * would fault that process). Memory from another process (`fromFd()`, a
 * received message) is adopted only when it is sealed the same way and at
 * most 1 GiB; the constructor's options relax both for trusted peers. A
 * named object cannot be sealed: {@linkcode SharedMemory.open} maps it
 * anyway, so only open names you trust.
 *
 * After {@linkcode close}, `buffer` throws `BadResource`. A view made before
 * `close()` does not fault: the shared pages are replaced by private zero
 * pages, so it reads zeros and its writes reach no other process.
 *
 * @example A counter that other processes can add to
 * ```ts
 * import { SharedMemory } from "@conduit/ipc";
 *
 * using mem = SharedMemory.create(4096);
 * const counter = new Int32Array(mem.buffer, 0, 1);
 * Atomics.add(counter, 0, 1);
 * console.log(Atomics.load(counter, 0)); // 1
 * ```
 */
export class SharedMemory implements Disposable {
  #fd: OwnedFd;
  #mapping: Mapping | undefined;
  #name: string | undefined;
  #size: number;
  #words: Int32Array | undefined;
  #waits = new Set<Wait>();

  /**
   * Maps the whole of a memfd or shared memory fd. Prefer
   * {@linkcode SharedMemory.create}, {@linkcode SharedMemory.open} or
   * `fromFd()`; this is for fds obtained elsewhere. By default only memory
   * sealed against shrinking, of at most 1 GiB, is mapped: another process
   * cannot make this one fault or map without bound.
   *
   * @param fd An fd open for reading and writing; the object owns it once
   * constructed (on a throw it is left to the caller).
   * @param options `name`: the shm_open name behind the fd, if any, for
   * {@linkcode unlink}; `allowShrink` and `maxBytes` to accept memory from
   * a trusted process that is unsealed or larger.
   * @throws {TypeError} When the memory can shrink and `allowShrink` is not
   * set.
   * @throws {RangeError} When the memory is empty or larger than `maxBytes`.
   *
   * @example Adopt a large region from a trusted parent
   * ```ts ignore
   * import { SharedMemory } from "@conduit/ipc";
   *
   * using mem = new SharedMemory(3, { maxBytes: 8 * 2 ** 30 });
   * ```
   */
  constructor(fd: number, options: SharedMemoryAdoptOptions = {}) {
    const maxBytes = checkMaxBytes(
      options.maxBytes ?? DEFAULT_MAX_ADOPT_BYTES,
    );
    const size = fileSize(fd);
    if (size <= 0) {
      throw new RangeError(
        `Cannot map SharedMemory: fd ${fd} has size ${size}`,
      );
    }
    if (options.allowShrink !== true) {
      const risk = shrinkRisk(fd);
      if (risk !== undefined) {
        throw new TypeError(
          `Cannot map SharedMemory from fd ${fd}: ${risk}; the process that made it could make this one fault (SIGBUS) by truncating it. Pass { allowShrink: true } only for memory from a process you trust`,
        );
      }
    }
    if (size > maxBytes) {
      throw new RangeError(
        `Cannot map SharedMemory from fd ${fd}: its ${size} bytes exceed the limit of ${maxBytes} (the maxBytes option)`,
      );
    }
    this.#size = size;
    this.#mapping = mapShared(fd, size, `SharedMemory fd ${fd}`);
    unmapWhenCollected(this.#mapping);
    this.#words = new Int32Array(this.#mapping.buffer, 0, size >>> 2);
    this.#fd = new OwnedFd(fd, "SharedMemory");
    this.#name = options.name;
  }

  /**
   * Creates zero-filled shared memory.
   *
   * @param size Size in bytes.
   * @param options `name` to create a POSIX shared memory object that other
   * processes can open by name; without it, an anonymous memfd.
   * @returns The mapped memory.
   * @throws {RangeError} When `size` is not a positive integer.
   * @throws {Deno.errors.AlreadyExists} When the name is taken.
   *
   * @example Anonymous and named
   * ```ts
   * import { SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(1 << 20);
   * using named = SharedMemory.create(4096, { name: `doc-${Deno.pid}` });
   * named.unlink();
   * console.log(mem.size, named.size); // 1048576 4096
   * ```
   */
  static create(size: number, options: SharedMemoryOptions = {}): SharedMemory {
    checkSize(size, "create");
    const lib = libc();
    if (options.name === undefined) {
      const fd = createMemfd(size, "conduit-shm");
      try {
        return new SharedMemory(fd, { maxBytes: size });
      } catch (error) {
        lib.close(fd);
        throw error;
      }
    }
    const path = shmName(options.name, "create");
    const fd = lib.shm_open(
      path,
      O.RDWR | O.CREAT | O.EXCL | O.CLOEXEC,
      0o600,
    );
    if (fd === -1) {
      throw systemError("shm_open", errno(), options.name);
    }
    try {
      check("ftruncate", lib.ftruncate(fd, BigInt(size)));
      return new SharedMemory(fd, {
        name: options.name,
        allowShrink: true,
        maxBytes: size,
      });
    } catch (error) {
      lib.close(fd);
      lib.shm_unlink(path);
      throw error;
    }
  }

  /**
   * Opens and maps an existing POSIX shared memory object by name, at its
   * current size. A named object cannot be sealed: any process that can open
   * the name can shrink it and make this one fault (SIGBUS), so open only
   * names you trust.
   *
   * @param name The name given to {@linkcode SharedMemory.create} (or to
   * `shm_open` in another program, without the leading slash).
   * @param options `maxBytes`: the largest size to map (default 1 GiB).
   * @returns The mapped memory.
   * @throws {Deno.errors.NotFound} When no object has that name.
   * @throws {RangeError} When the object is empty or larger than `maxBytes`.
   *
   * @example Open what another process created
   * ```ts
   * import { SharedMemory } from "@conduit/ipc";
   *
   * const name = `doc-open-${Deno.pid}`;
   * using made = SharedMemory.create(4096, { name });
   * using same = SharedMemory.open(name);
   * new Uint8Array(made.buffer)[1] = 7;
   * console.log(new Uint8Array(same.buffer)[1]); // 7
   * made.unlink();
   * ```
   */
  static open(
    name: string,
    options: Pick<SharedMemoryAdoptOptions, "maxBytes"> = {},
  ): SharedMemory {
    const path = shmName(name, "open");
    const lib = libc();
    const fd = lib.shm_open(path, O.RDWR | O.CLOEXEC, 0);
    if (fd === -1) throw systemError("shm_open", errno(), name);
    try {
      return new SharedMemory(fd, {
        name,
        allowShrink: true,
        maxBytes: options.maxBytes,
      });
    } catch (error) {
      lib.close(fd);
      throw error;
    }
  }

  /**
   * Removes a POSIX shared memory name. Processes that have it mapped keep
   * their memory.
   *
   * @param name The name.
   * @throws {Deno.errors.NotFound} When no object has that name.
   *
   * @example Remove a name left behind
   * ```ts
   * import { SharedMemory } from "@conduit/ipc";
   *
   * SharedMemory.create(64, { name: `doc-unlink-${Deno.pid}` }).close();
   * SharedMemory.unlink(`doc-unlink-${Deno.pid}`);
   * ```
   */
  static unlink(name: string): void {
    const path = shmName(name, "unlink");
    if (libc().shm_unlink(path) === -1) {
      throw systemError("shm_unlink", errno(), name);
    }
  }

  /**
   * A plain `ArrayBuffer` over the whole mapping.
   *
   * @throws {Deno.errors.BadResource} After {@linkcode close}.
   */
  get buffer(): ArrayBuffer {
    if (this.#mapping === undefined) throw closedError("SharedMemory");
    return this.#mapping.buffer;
  }

  /** The size in bytes (still known after close). */
  get size(): number {
    return this.#size;
  }

  /** The shm_open name, or `undefined` for a memfd. */
  get name(): string | undefined {
    return this.#name;
  }

  /** The memfd (or shm fd), for interop; the object still owns it. */
  get rawFd(): number {
    return this.#fd.fd;
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#fd.closed;
  }

  /**
   * Kept for the endpoint shape: a pending {@linkcode wait} always keeps the
   * process alive.
   */
  ref(): void {
    this.#fd.ref();
  }

  /**
   * Kept for the endpoint shape: a pending {@linkcode wait} always keeps the
   * process alive.
   */
  unref(): void {
    this.#fd.unref();
  }

  /**
   * Waits until another process (or this one) calls {@linkcode notify} on
   * the 32-bit word at `index` (as in `new Int32Array(buffer)[index]`),
   * provided the word holds `expected` now: the semantics of
   * `Atomics.waitAsync`, across processes. Waiting takes no thread per wait
   * and no polling loop (every wait of the process is one entry of one
   * `futex_waitv` call).
   *
   * The word is a futex: any program that maps the same memory, in any
   * language, wakes these waits with `futex(addr, FUTEX_WAKE, n)` and can
   * wait with `FUTEX_WAIT` for {@linkcode notify}. As with every futex,
   * change the word before you notify: a wait also ends with `"ok"` when it
   * finds the word changed, and a notify that changes nothing can be missed
   * by a wait that is just starting.
   *
   * @param index Index of the word, from 0 to `size / 4 - 1`.
   * @param expected The value the word must hold for the wait to begin.
   * @param options `timeout` in ms and `signal`.
   * @returns `"not-equal"` when the word did not hold `expected`, `"ok"` when
   * woken, `"timed-out"` when the timeout passed first.
   * @throws {RangeError} When `index` is outside the memory.
   * @throws {Deno.errors.BadResource} When the memory is closed (also ends
   * a pending wait).
   * @throws {Deno.errors.NotSupported} When the kernel lacks `futex_waitv`
   * (Linux 5.16).
   *
   * @example Wait for another process to set a flag
   * ```ts
   * import { SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * const words = new Int32Array(mem.buffer);
   * const woken = mem.wait(0, 0, { timeout: 5000 });
   * Atomics.store(words, 0, 1); // in practice, another process
   * mem.notify(0);
   * console.log(await woken); // "ok"
   * ```
   */
  wait(
    index: number,
    expected: number,
    options: SharedMemoryWaitOptions = {},
  ): Promise<SharedMemoryWaitResult> {
    try {
      const mapping = this.#word(index, "wait on");
      if (typeof expected !== "number") {
        throw new TypeError(
          `Cannot wait on SharedMemory: expected must be a number, got ${typeof expected}`,
        );
      }
      let timeout = options.timeout ?? Infinity;
      if (typeof timeout !== "number") {
        throw new TypeError(
          `Cannot wait on SharedMemory: timeout must be a number, got ${typeof timeout}`,
        );
      }
      if (Number.isNaN(timeout)) timeout = Infinity;
      return waitWord(
        this.#words!,
        index,
        this.#address(mapping, index),
        expected | 0,
        { timeout: Math.max(0, timeout), signal: options.signal },
        this.#waits,
      );
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * Wakes up to `count` waits on the word at `index`, in every process
   * that maps this memory (the semantics of `Atomics.notify`).
   *
   * @param index Index of the word, from 0 to `size / 4 - 1`.
   * @param count How many waiters to wake. Default: all.
   * @returns How many waiters the kernel woke.
   * @throws {RangeError} When `index` is outside the memory or `count` is
   * negative.
   * @throws {Deno.errors.BadResource} When the memory is closed.
   *
   * @example Wake every waiter
   * ```ts
   * import { SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * Atomics.store(new Int32Array(mem.buffer), 1, 1);
   * console.log(mem.notify(1)); // 0: nobody waits yet
   * ```
   */
  notify(index: number, count = Infinity): number {
    const mapping = this.#word(index, "notify on");
    if (typeof count !== "number" || Number.isNaN(count) || count < 0) {
      throw new RangeError(
        `Cannot notify on SharedMemory: count must be a non-negative number, got ${count}`,
      );
    }
    return wakeWord(this.#address(mapping, index), Math.floor(count));
  }

  #word(index: number, verb: string): Mapping {
    if (this.#mapping === undefined) throw closedError("SharedMemory");
    if (
      !Number.isInteger(index) || index < 0 || index >= this.#size >>> 2
    ) {
      throw new RangeError(
        `Cannot ${verb} SharedMemory: word index ${index} is outside 0 to ${
          (this.#size >>> 2) - 1
        }`,
      );
    }
    return this.#mapping;
  }

  #address(mapping: Mapping, index: number): bigint {
    return BigInt(Deno.UnsafePointer.value(mapping.pointer)) +
      BigInt(index * 4);
  }

  /**
   * Removes this memory's POSIX name (see {@linkcode SharedMemory.unlink});
   * allowed before or after {@linkcode close}.
   *
   * @throws {TypeError} When the memory has no name (a memfd).
   */
  unlink(): void {
    if (this.#name === undefined) {
      throw new TypeError(
        "Cannot unlink SharedMemory: it has no name (it is a memfd)",
      );
    }
    SharedMemory.unlink(this.#name);
  }

  /**
   * Unmaps the memory from this process's point of view and closes the fd.
   * Idempotent. Other processes keep their mappings.
   */
  close(): void {
    if (this.#fd.closed) return;
    this.#drop();
    this.#fd.close();
  }

  /** Closes the memory. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** @internal Gives up the fd without closing it; the mapping is dropped. */
  _release(): number {
    const fd = this.#fd.release();
    this.#drop();
    return fd;
  }

  #drop(): void {
    if (this.#mapping === undefined) return;
    // No wait may outlive the mapping its futex_waitv entry names.
    for (const wait of [...this.#waits]) {
      cancelWait(wait, closedError("SharedMemory"));
    }
    retire(this.#mapping);
    this.#mapping = undefined;
    this.#words = undefined;
  }
}

// Memory adopted from another process gets the constructor's defaults:
// sealed against shrinking and at most 1 GiB. A named object (which takes no
// seals) is therefore refused; a trusted peer's can be mapped with
// `new SharedMemory(fd, { allowShrink: true })`.
registerAdopter((fd, kind, access) => {
  if (kind !== "file" || access !== O.RDWR) return null;
  const link = fdLink(fd);
  if (link === undefined) return null;
  if (link.startsWith("/memfd:")) {
    return new SharedMemory(fd);
  }
  if (link.startsWith("/dev/shm/")) {
    const name = link.slice("/dev/shm/".length);
    return new SharedMemory(fd, {
      name: NAME.test(name) ? name : undefined,
    });
  }
  return null;
});
