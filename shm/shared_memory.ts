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

import { type PathAccess, requirePath } from "../_permissions.ts";
import { inspectEndpoint } from "../_inspect.ts";
import {
  checkNumberOption,
  checkOptionsObject,
  expectedUid,
} from "../_socket_options.ts";
import { libc } from "../ffi/libc.ts";
import { check, closedError, errno, systemError } from "../ffi/errors.ts";
import { O } from "../ffi/layout.ts";
import { cstr } from "../ffi/mem.ts";
import { OwnedFd } from "../ffi/fd.ts";
import {
  createMemfd,
  fileOwnership,
  fileSize,
  SHM_NAME,
  shrinkRisk,
} from "./_memfd.ts";
import { type Mapping, mapShared, retire, unmapWhenCollected } from "./_map.ts";
import { type WaitOptions, type WaitResult, WordWaits } from "./wait.ts";
import { type EndpointKind, endpointKind, releaseFd } from "../_keys.ts";
import { memRefed, refWatchers } from "./_keys.ts";

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

/** Options for {@linkcode SharedMemory.open}. */
export interface SharedMemoryOpenOptions {
  /**
   * The largest size to map, in bytes. Default 1 GiB; `Infinity` for no
   * limit.
   */
  maxBytes?: number;
  /**
   * The user id that must own the object. Default: this process's
   * (effective) own, and no one else may write to it (no group or other
   * write bit; with an ACL, the group bits are its mask), so that an object
   * another user created first under the name (`/dev/shm` is writable by
   * every user), or one that others can write, is refused: another user
   * could read what this process writes and shrink it under this process
   * (SIGBUS). Objects made with a umask of 002 are group-writable: pass
   * this user's uid to accept them. A uid checks the owner alone; `"any"`
   * checks nothing.
   */
  expectUid?: number | "any";
}

/** Largest memory adopted from another process by default: 1 GiB. */
const DEFAULT_MAX_ADOPT_BYTES = 1 << 30;

/**
 * Options for {@linkcode SharedMemory.wait}: `timeout` in ms (`Infinity` by
 * default, `0` only compares) and an abort `signal`.
 */
export type SharedMemoryWaitOptions = WaitOptions;

/** How {@linkcode SharedMemory.wait} ended, as `Atomics.waitAsync` says. */
export type SharedMemoryWaitResult = WaitResult;

/**
 * The `shm_open` form of a name, once the name is checked and Deno's
 * permissions for its file under `/dev/shm` are granted (`needs`).
 */
function shmName(
  name: string,
  action: string,
  needs: readonly PathAccess[],
): Uint8Array<ArrayBuffer> {
  if (
    typeof name !== "string" || !SHM_NAME.test(name) || name === "." ||
    name === ".."
  ) {
    throw new TypeError(
      `Cannot ${action} SharedMemory: invalid name ${
        JSON.stringify(name)
      }: 1 to 250 characters, no "/"`,
    );
  }
  requirePath(`/dev/shm/${name}`, needs, `Cannot ${action} SharedMemory`);
  return cstr(`/${name}`);
}

function checkSize(size: number, action: string): void {
  checkNumberOption(size, "size", `${action} SharedMemory`);
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new RangeError(
      `Cannot ${action} SharedMemory: size must be a positive integer, got ${size}`,
    );
  }
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

/** The failure of `shm_open` for {@linkcode SharedMemory.create} or `open`. */
function shmOpenError(doing: "create" | "open", name: string): Error {
  const error = systemError("shm_open", errno());
  const what = error.code === "EEXIST"
    ? `the name "${name}" is taken (SharedMemory.open() opens it)`
    : error.code === "ENOENT"
    ? `no shared memory is named "${name}"`
    : `"${name}"`;
  error.message = `Cannot ${doing} SharedMemory: ${what}: ${error.message}`;
  return error;
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
  #waits: WordWaits;

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
    this.#waits = new WordWaits("SharedMemory", this.#mapping.buffer);
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
   * @throws {Deno.errors.NotCapable} For a name, without write permission
   * for `/dev/shm/<name>`.
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
    checkOptionsObject(options, "create SharedMemory");
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
    const path = shmName(options.name, "create", ["write"]);
    const fd = lib.shm_open(
      path,
      O.RDWR | O.CREAT | O.EXCL | O.CLOEXEC,
      0o600,
    );
    if (fd === -1) throw shmOpenError("create", options.name);
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
   * @param options `maxBytes`: the largest size to map (default 1 GiB);
   * `expectUid`: the user that must own the object (default this
   * process's).
   * @returns The mapped memory.
   * @throws {Deno.errors.NotFound} When no object has that name.
   * @throws {Deno.errors.PermissionDenied} When another user owns the
   * object, or, by default, when other users can write to it (see
   * `expectUid`).
   * @throws {RangeError} When the object is empty or larger than `maxBytes`.
   * @throws {Deno.errors.NotCapable} Without read and write permission for
   * `/dev/shm/<name>`.
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
    options: SharedMemoryOpenOptions = {},
  ): SharedMemory {
    checkOptionsObject(options, "open SharedMemory");
    const path = shmName(name, "open", ["read", "write"]);
    const lib = libc();
    const owner = expectedUid(
      options.expectUid,
      lib.geteuid(),
      "open SharedMemory",
    );
    const fd = lib.shm_open(path, O.RDWR | O.CLOEXEC, 0);
    if (fd === -1) throw shmOpenError("open", name);
    try {
      const { uid, mode } = fileOwnership(fd);
      if (owner !== undefined && uid !== owner) {
        throw new Deno.errors.PermissionDenied(
          `Cannot open SharedMemory "${name}": it is owned by uid ${uid}, not the expected uid ${owner} (the expectUid option); it was not mapped`,
        );
      }
      // The group bits are an ACL's mask where it has one: no write bit
      // there means that no named user or group can write either.
      if (options.expectUid === undefined && (mode & 0o022) !== 0) {
        throw new Deno.errors.PermissionDenied(
          `Cannot open SharedMemory "${name}": users other than its owner can write to it (mode 0${
            mode.toString(8)
          }), so they could shrink it under this process (SIGBUS); it was not mapped. Pass expectUid to map it all the same`,
        );
      }
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
   * @throws {Deno.errors.NotCapable} Without write permission for
   * `/dev/shm/<name>`.
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
    const path = shmName(name, "unlink", ["write"]);
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
   * Shows the kind, fd, state, size and name, as
   * `SharedMemory { fd: 8, state: "open", size: 4096 }`.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    const fields = {
      ...this.#fd.state(),
      size: this.#size,
      ...(this.#name === undefined ? {} : { name: this.#name }),
    };
    return inspectEndpoint("SharedMemory", fields, inspect, options);
  }

  /**
   * Waits, without blocking the thread, while the 32-bit word at `index`
   * (byte offset `4 * index`) holds `expected`, until another process or
   * this one calls {@linkcode notify} on it: the semantics of
   * `Atomics.waitAsync`, across processes. Like a futex, a wait can also end
   * with `"ok"` because the word changed while no wake could reach this
   * process: re-check the word after every wait, and change the word
   * before notifying. See `shm/wait.ts` for the protocol (a plain futex on
   * the mapped word, so C or Rust peers can wake and wait too).
   *
   * A pending wait keeps the process alive unless {@linkcode unref} was
   * called. All waits of a process share one `futex_waitv` call on one of
   * Deno's blocking-pool threads; no thread per wait, no polling loop.
   *
   * @param index The word: an integer from 0 to `size / 4 - 1`.
   * @param expected The value the word must hold for the wait to start.
   * @param options `timeout` in ms and an abort `signal`.
   * @returns `"ok"` once woken, `"not-equal"` when the word did not hold
   * `expected`, `"timed-out"` once `timeout` passed.
   * @throws {RangeError} When `index` is outside the memory.
   * @throws {Deno.errors.NotSupported} When the kernel lacks `futex_waitv`
   * (Linux older than 5.16) or refuses it.
   * @throws {Deno.errors.BadResource} When the memory is closed, then or
   * while waiting.
   *
   * @example Wait for another process to bump a word
   * ```ts
   * import { SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * const words = new Int32Array(mem.buffer);
   * const waiting = mem.wait(0, 0, { timeout: 5000 });
   * Atomics.store(words, 0, 1); // another process would do this
   * mem.notify(0);
   * console.log(await waiting); // "ok"
   * ```
   */
  wait(
    index: number,
    expected: number,
    options?: SharedMemoryWaitOptions,
  ): Promise<SharedMemoryWaitResult> {
    return this.#waits.wait(index, expected, options);
  }

  /**
   * Wakes up to `count` waiters on the 32-bit word at `index`: those of this
   * process first (oldest first), then, for what is left of `count`, a
   * `FUTEX_WAKE` reaches the other processes. A process woken from outside
   * wakes all its waiters on that word.
   *
   * @param index The word: an integer from 0 to `size / 4 - 1`.
   * @param count How many to wake; default all.
   * @returns How many were woken: here, plus what the kernel reports.
   * @throws {RangeError} When `index` is outside the memory or `count` is
   * negative.
   *
   * @example Wake every waiter after a store
   * ```ts
   * import { SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096);
   * Atomics.store(new Int32Array(mem.buffer), 1, 7);
   * console.log(mem.notify(1)); // 0: nobody was waiting
   * ```
   */
  notify(index: number, count?: number): number {
    if (this.#fd.closed) throw closedError("SharedMemory");
    return this.#waits.notify(index, count);
  }

  /** @ignore Whether pending waits keep the process alive. */
  get [memRefed](): boolean {
    return this.#waits.refed;
  }

  /** @ignore Told of each change of the ref state. */
  readonly [refWatchers]: Set<(refed: boolean) => void> = new Set();

  /** Makes pending {@linkcode wait}s keep the process alive (the default). */
  ref(): void {
    this.#fd.ref();
    this.#setRef(true);
  }

  #setRef(refed: boolean): void {
    if (this.#waits.refed === refed) return;
    if (refed) this.#waits.ref();
    else this.#waits.unref();
    for (const watcher of [...this[refWatchers]]) watcher(refed);
  }

  /**
   * Lets the process exit while {@linkcode wait}s are pending. While only
   * unref'd waits are pending in the process, none is in the kernel: they
   * end (`"ok"`) when a check every 10 ms finds their word changed.
   */
  unref(): void {
    this.#fd.unref();
    this.#setRef(false);
  }

  /**
   * Removes this memory's POSIX name (see {@linkcode SharedMemory.unlink});
   * allowed before or after {@linkcode close}.
   *
   * @throws {TypeError} When the memory has no name (a memfd).
   *
   * @example Unlink once the peers have opened it
   * ```ts
   * import { SharedMemory } from "@conduit/ipc";
   *
   * using mem = SharedMemory.create(4096, { name: `doc-own-${Deno.pid}` });
   * using peer = SharedMemory.open(`doc-own-${Deno.pid}`);
   * mem.unlink(); // the name is gone; both mappings stay
   * console.log(peer.size); // 4096
   * ```
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

  /** @ignore The kind of endpoint this is. */
  get [endpointKind](): EndpointKind {
    return "SharedMemory";
  }

  /** @ignore Gives up the fd without closing it; the mapping is dropped. */
  [releaseFd](): number {
    const fd = this.#fd.release();
    this.#drop();
    return fd;
  }

  #drop(): void {
    const mapping = this.#mapping;
    this.#mapping = undefined;
    // Retired once no futex call of this process covers its words.
    this.#waits.close(() => {
      if (mapping !== undefined) retire(mapping);
    });
  }
}
