/**
 * Shared memory between processes: {@linkcode SharedMemory} (a memfd or a
 * POSIX shared memory name, mapped as an `ArrayBuffer`) and
 * {@linkcode shmQueue} (whole messages of any size through a ring in shared
 * memory, woken through Deno's event loop in the main thread and through
 * the process's one poller in a Worker or on the `ffi` wake path).
 *
 * Both travel to other processes like any endpoint of this module: as an fd
 * to `spawn({ fds })` or in `UnixSocket.send(bytes, { fds })`, rebuilt there
 * by `fromFd()`.
 *
 * @example A queue within one process
 * ```ts
 * import { shmQueue } from "@conduit/ipc/shm";
 *
 * using q = shmQueue({ bytes: 1 << 16 });
 * const [tx, rx] = q;
 * await tx.send(new TextEncoder().encode("hello"));
 * console.log(new TextDecoder().decode((await rx.recv())!)); // "hello"
 * ```
 *
 * @module
 */

export {
  SharedMemory,
  type SharedMemoryAdoptOptions,
  type SharedMemoryOpenOptions,
  type SharedMemoryOptions,
  type SharedMemoryWaitOptions,
  type SharedMemoryWaitResult,
} from "./shared_memory.ts";
export {
  type ShmQueue,
  shmQueue,
  shmQueueFromFd,
  type ShmQueueOptions,
  ShmReceiver,
  type ShmRecvOptions,
  ShmSender,
  type ShmWaitOptions,
} from "./queue.ts";
export { type SyncOptions, type SyncWaitOptions } from "./_sync.ts";
export { type LockOptions, Mutex, MutexGuard } from "./mutex.ts";
export { Semaphore, type SemaphoreOptions } from "./semaphore.ts";
export { Event } from "./event.ts";
export { Barrier } from "./barrier.ts";
export {
  ShmReceiverSet,
  type ShmSelectOptions,
  type ShmSelectResult,
} from "./select.ts";
