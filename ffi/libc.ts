/**
 * The libc symbol table: every C function the module calls, loaded once on
 * first use. Each entry carries its C prototype as a comment. Functions that
 * glibc does not wrap are reached through `syscall(2)` under an alias.
 *
 * @module
 */

import { ARCH, type Arch } from "./layout.ts";

const symbols = {
  // int *__errno_location(void);
  __errno_location: { parameters: [], result: "pointer" },
  // int close(int fd);
  close: { parameters: ["i32"], result: "i32" },
  // int pipe2(int pipefd[2], int flags);
  pipe2: { parameters: ["buffer", "i32"], result: "i32" },
  // int fcntl(int fd, int cmd, ... /* int arg */);
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  // int dup3(int oldfd, int newfd, int flags);
  dup3: { parameters: ["i32", "i32", "i32"], result: "i32" },
  // ssize_t read(int fd, void *buf, size_t count);
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  // ssize_t write(int fd, const void *buf, size_t count);
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  // ssize_t preadv2(int fd, const struct iovec *iov, int iovcnt, off_t offset, int flags);
  preadv2: {
    parameters: ["i32", "pointer", "i32", "i64", "i32"],
    result: "isize",
  },
  // ssize_t pwritev2(int fd, const struct iovec *iov, int iovcnt, off_t offset, int flags);
  pwritev2: {
    parameters: ["i32", "pointer", "i32", "i64", "i32"],
    result: "isize",
  },
  // int fstat(int fd, struct stat *statbuf);
  fstat: { parameters: ["i32", "buffer"], result: "i32" },
  // int ftruncate(int fd, off_t length);
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  // off_t lseek(int fd, off_t offset, int whence);
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  // int fstatfs(int fd, struct statfs *buf);
  fstatfs: { parameters: ["i32", "buffer"], result: "i32" },
  // int clock_gettime(clockid_t clockid, struct timespec *tp);
  clock_gettime: { parameters: ["i32", "buffer"], result: "i32" },

  // int epoll_create1(int flags);
  epoll_create1: { parameters: ["i32"], result: "i32" },
  // int epoll_ctl(int epfd, int op, int fd, struct epoll_event *event);
  epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  // int epoll_wait(int epfd, struct epoll_event *events, int maxevents, int timeout);
  epoll_wait: {
    parameters: ["i32", "pointer", "i32", "i32"],
    result: "i32",
  },
  // The same function run on a blocking-pool thread: the poller's one wait.
  epoll_wait_nb: {
    name: "epoll_wait",
    parameters: ["i32", "pointer", "i32", "i32"],
    result: "i32",
    nonblocking: true,
  },
  // int eventfd(unsigned int initval, int flags);
  eventfd: { parameters: ["u32", "i32"], result: "i32" },

  // int socket(int domain, int type, int protocol);
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  // int socketpair(int domain, int type, int protocol, int sv[2]);
  socketpair: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  // int bind(int sockfd, const struct sockaddr *addr, socklen_t addrlen);
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  // int listen(int sockfd, int backlog);
  listen: { parameters: ["i32", "i32"], result: "i32" },
  // int accept4(int sockfd, struct sockaddr *addr, socklen_t *addrlen, int flags);
  accept4: {
    parameters: ["i32", "pointer", "pointer", "i32"],
    result: "i32",
  },
  // int connect(int sockfd, const struct sockaddr *addr, socklen_t addrlen);
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  // int shutdown(int sockfd, int how);
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  // int getsockopt(int sockfd, int level, int optname, void *optval, socklen_t *optlen);
  getsockopt: {
    parameters: ["i32", "i32", "i32", "buffer", "buffer"],
    result: "i32",
  },
  // int setsockopt(int sockfd, int level, int optname, const void *optval, socklen_t optlen);
  setsockopt: {
    parameters: ["i32", "i32", "i32", "buffer", "u32"],
    result: "i32",
  },
  // int getsockname(int sockfd, struct sockaddr *addr, socklen_t *addrlen);
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  // ssize_t send(int sockfd, const void *buf, size_t len, int flags);
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  // ssize_t recv(int sockfd, void *buf, size_t len, int flags);
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  // ssize_t sendmsg(int sockfd, const struct msghdr *msg, int flags);
  sendmsg: { parameters: ["i32", "pointer", "i32"], result: "isize" },
  // int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags);
  sendmmsg: { parameters: ["i32", "pointer", "u32", "i32"], result: "i32" },
  // ssize_t recvmsg(int sockfd, struct msghdr *msg, int flags);
  recvmsg: { parameters: ["i32", "pointer", "i32"], result: "isize" },
  // ssize_t readlink(const char *pathname, char *buf, size_t bufsiz);
  readlink: { parameters: ["buffer", "buffer", "usize"], result: "isize" },
  // int open(const char *pathname, int flags, ... /* mode_t mode */);
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  // int unlink(const char *pathname);
  unlink: { parameters: ["buffer"], result: "i32" },
  // int mkdir(const char *pathname, mode_t mode);
  mkdir: { parameters: ["buffer", "u32"], result: "i32" },
  // int renameat2(int olddirfd, const char *oldpath, int newdirfd,
  //   const char *newpath, unsigned int flags);
  renameat2: {
    parameters: ["i32", "buffer", "i32", "buffer", "u32"],
    result: "i32",
  },
  // int fchmodat(int dirfd, const char *pathname, mode_t mode, int flags);
  fchmodat: { parameters: ["i32", "buffer", "u32", "i32"], result: "i32" },
  // int fstatat(int dirfd, const char *pathname, struct stat *statbuf, int flags);
  fstatat: { parameters: ["i32", "buffer", "buffer", "i32"], result: "i32" },
  // int linkat(int olddirfd, const char *oldpath, int newdirfd,
  //   const char *newpath, int flags);
  linkat: {
    parameters: ["i32", "buffer", "i32", "buffer", "i32"],
    result: "i32",
  },
  // int unlinkat(int dirfd, const char *pathname, int flags);
  unlinkat: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  // int poll(struct pollfd *fds, nfds_t nfds, int timeout);
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },

  // int posix_spawnp(pid_t *pid, const char *file,
  //   const posix_spawn_file_actions_t *file_actions,
  //   const posix_spawnattr_t *attrp, char *const argv[], char *const envp[]);
  posix_spawnp: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "buffer", "pointer"],
    result: "i32",
  },
  // int posix_spawn_file_actions_init(posix_spawn_file_actions_t *fa);
  posix_spawn_file_actions_init: { parameters: ["buffer"], result: "i32" },
  // int posix_spawn_file_actions_destroy(posix_spawn_file_actions_t *fa);
  posix_spawn_file_actions_destroy: { parameters: ["buffer"], result: "i32" },
  // int posix_spawn_file_actions_adddup2(posix_spawn_file_actions_t *fa, int fd, int newfd);
  posix_spawn_file_actions_adddup2: {
    parameters: ["buffer", "i32", "i32"],
    result: "i32",
  },
  // int posix_spawn_file_actions_addopen(posix_spawn_file_actions_t *fa, int fd,
  //   const char *path, int oflag, mode_t mode);
  posix_spawn_file_actions_addopen: {
    parameters: ["buffer", "i32", "buffer", "i32", "u32"],
    result: "i32",
  },
  // int posix_spawn_file_actions_addchdir_np(posix_spawn_file_actions_t *fa, const char *path);
  posix_spawn_file_actions_addchdir_np: {
    parameters: ["buffer", "buffer"],
    result: "i32",
  },
  // int posix_spawn_file_actions_addclosefrom_np(posix_spawn_file_actions_t *fa, int from);
  posix_spawn_file_actions_addclosefrom_np: {
    parameters: ["buffer", "i32"],
    result: "i32",
  },
  // int posix_spawnattr_init(posix_spawnattr_t *attr);
  posix_spawnattr_init: { parameters: ["buffer"], result: "i32" },
  // int posix_spawnattr_destroy(posix_spawnattr_t *attr);
  posix_spawnattr_destroy: { parameters: ["buffer"], result: "i32" },
  // int posix_spawnattr_setflags(posix_spawnattr_t *attr, short flags);
  posix_spawnattr_setflags: { parameters: ["buffer", "i16"], result: "i32" },
  // int posix_spawnattr_setsigdefault(posix_spawnattr_t *attr, const sigset_t *sigdefault);
  posix_spawnattr_setsigdefault: {
    parameters: ["buffer", "buffer"],
    result: "i32",
  },
  // int posix_spawnattr_setsigmask(posix_spawnattr_t *attr, const sigset_t *sigmask);
  posix_spawnattr_setsigmask: {
    parameters: ["buffer", "buffer"],
    result: "i32",
  },
  // int sigemptyset(sigset_t *set);
  sigemptyset: { parameters: ["buffer"], result: "i32" },
  // int sigaddset(sigset_t *set, int signum);
  sigaddset: { parameters: ["buffer", "i32"], result: "i32" },

  // int kill(pid_t pid, int sig);
  kill: { parameters: ["i32", "i32"], result: "i32" },
  // int pidfd_open(pid_t pid, unsigned int flags): SYS.pidfd_open.
  pidfd_open: {
    name: "syscall",
    parameters: ["i64", "i64", "i64"],
    result: "i32",
  },
  // int pidfd_send_signal(int pidfd, int sig, siginfo_t *info, unsigned int flags): SYS.pidfd_send_signal.
  pidfd_send_signal: {
    name: "syscall",
    parameters: ["i64", "i64", "i64", "i64", "i64"],
    result: "i32",
  },
  // int waitid(idtype_t idtype, id_t id, siginfo_t *infop, int options, struct rusage *ru): SYS.waitid.
  waitid: {
    name: "syscall",
    parameters: ["i64", "i64", "i64", "buffer", "i64", "i64"],
    result: "i32",
  },
  // long futex(uint32_t *uaddr, int op, uint32_t val, const struct timespec *timeout,
  //   uint32_t *uaddr2, uint32_t val3): SYS.futex.
  futex: {
    name: "syscall",
    parameters: ["i64", "pointer", "i64", "i64", "pointer", "i64", "i64"],
    result: "i32",
  },

  // long futex_waitv(struct futex_waitv *waiters, unsigned int nr_futexes,
  //   unsigned int flags, struct timespec *timeout, clockid_t clockid): SYS.futex_waitv.
  futex_waitv: {
    name: "syscall",
    parameters: ["i64", "pointer", "i64", "i64", "pointer", "i64"],
    result: "i32",
  },
  // The same call run on a blocking-pool thread: the one wait that serves
  // every shared-memory wait of the process (shm/wait.ts).
  futex_waitv_nb: {
    name: "syscall",
    parameters: ["i64", "pointer", "i64", "i64", "pointer", "i64"],
    result: "i32",
    nonblocking: true,
  },

  // long io_submit(aio_context_t ctx, long nr, struct iocb **iocbpp):
  // SYS.io_submit, the context as a pointer (it is the ring's address).
  io_submit: {
    name: "syscall",
    parameters: ["i64", "pointer", "i64", "buffer"],
    result: "i32",
  },
  // int io_uring_enter(unsigned fd, unsigned to_submit, unsigned
  // min_complete, unsigned flags, const void *arg, size_t argsz):
  // SYS.io_uring_enter.
  io_uring_enter: {
    name: "syscall",
    parameters: ["i64", "i64", "i64", "i64", "i64", "i64", "i64"],
    result: "i32",
  },
  // long syscall(long number, ...): the Linux AIO calls io_setup,
  // io_cancel, io_getevents and io_submit, with pointers as addresses.
  syscall6: {
    name: "syscall",
    parameters: ["i64", "i64", "i64", "i64", "i64", "i64"],
    result: "i64",
  },

  // int memfd_create(const char *name, unsigned int flags);
  memfd_create: { parameters: ["buffer", "u32"], result: "i32" },
  // int shm_open(const char *name, int oflag, mode_t mode);
  shm_open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  // int shm_unlink(const char *name);
  shm_unlink: { parameters: ["buffer"], result: "i32" },
  // int madvise(void *addr, size_t length, int advice);
  madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
  // void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset);
  mmap: {
    parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"],
    result: "pointer",
  },
  // int munmap(void *addr, size_t length);
  munmap: { parameters: ["pointer", "usize"], result: "i32" },

  // int sched_yield(void);
  sched_yield: { parameters: [], result: "i32" },
  // void *memmove(void *dest, const void *src, size_t n);
  // Called with n = 0 on one buffer, it touches no memory and returns the
  // buffer's address: one fast call, where Deno.UnsafePointer.of() and
  // .value() make two slow ones and a pointer object.
  address_of: {
    name: "memmove",
    parameters: ["buffer", "buffer", "usize"],
    result: "usize",
  },
  // pid_t getpid(void);
  getpid: { parameters: [], result: "i32" },
  // uid_t getuid(void);
  getuid: { parameters: [], result: "u32" },
  // uid_t geteuid(void);
  geteuid: { parameters: [], result: "u32" },
  // extern char **environ; (the address of the variable, read at each use)
  environ: { type: "pointer" },
  // int getrlimit(int resource, struct rlimit *rlim);
  getrlimit: { parameters: ["i32", "buffer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The loaded libc symbols. */
export type Libc = Deno.DynamicLibrary<typeof symbols>["symbols"];

let loaded: Libc | undefined;

/** What `Deno.build` tells of the platform. */
export interface Platform {
  /** The target triple, such as `"x86_64-unknown-linux-gnu"`. */
  readonly target: string;
  /** The operating system, such as `"linux"`. */
  readonly os: string;
  /** The architecture, such as `"x86_64"`. */
  readonly arch: string;
  /** The C library environment of the build, such as `"gnu"` or `"musl"`. */
  readonly env?: string;
}

/**
 * Why this module cannot run on `platform`, or `undefined` when it can: it
 * knows the struct layouts and syscall numbers of x86_64 and aarch64 Linux
 * with glibc, and no others.
 */
export function platformProblem(platform: Platform): string | undefined {
  const { target, os, arch, env } = platform;
  if (
    os === "linux" && (arch === "x86_64" || arch === "aarch64") &&
    env === "gnu"
  ) {
    return undefined;
  }
  return "@conduit/ipc supports x86_64 and aarch64 Linux with glibc only; " +
    `this Deno is built for ${target}`;
}

/**
 * Returns the libc symbols, opening `libc.so.6` on the first call.
 *
 * A platform other than x86_64 or aarch64 Linux with glibc fails here, at
 * first use, with `Deno.errors.NotSupported`. A missing `--allow-ffi`
 * surfaces as the runtime's own `NotCapable` error; any other load failure
 * is wrapped with its cause.
 */
export function libc(): Libc {
  if (loaded !== undefined) return loaded;
  const problem = platformProblem(Deno.build);
  if (problem !== undefined) throw new Deno.errors.NotSupported(problem);
  try {
    loaded = Deno.dlopen("libc.so.6", symbols).symbols;
  } catch (error) {
    if (
      error instanceof Deno.errors.NotCapable ||
      error instanceof Deno.errors.PermissionDenied
    ) {
      throw error;
    }
    throw new Error(
      "Cannot load libc.so.6: @conduit/ipc needs glibc on Linux and --allow-ffi",
      { cause: error },
    );
  }
  return loaded;
}

/** Syscall numbers used through `syscall(2)`. */
export type SyscallNumbers = {
  readonly io_setup: number;
  readonly io_getevents: number;
  readonly io_submit: number;
  readonly io_cancel: number;
  readonly futex: number;
  readonly waitid: number;
  readonly pidfd_send_signal: number;
  readonly pidfd_open: number;
  readonly futex_waitv: number;
  readonly io_uring_setup: number;
  readonly io_uring_enter: number;
  readonly io_uring_register: number;
};

/** Syscall numbers used through `syscall(2)`, per architecture. */
export const SYS_BY_ARCH: Readonly<Record<Arch, SyscallNumbers>> = {
  x86_64: {
    io_setup: 206,
    io_getevents: 208,
    io_submit: 209,
    io_cancel: 210,
    futex: 202,
    waitid: 247,
    pidfd_send_signal: 424,
    pidfd_open: 434,
    futex_waitv: 449,
    io_uring_setup: 425,
    io_uring_enter: 426,
    io_uring_register: 427,
  },
  aarch64: {
    io_setup: 0,
    io_getevents: 4,
    io_submit: 2,
    io_cancel: 3,
    futex: 98,
    waitid: 95,
    pidfd_send_signal: 424,
    pidfd_open: 434,
    futex_waitv: 449,
    io_uring_setup: 425,
    io_uring_enter: 426,
    io_uring_register: 427,
  },
};

/** Syscall numbers of this architecture used through `syscall(2)`. */
export const SYS: SyscallNumbers = SYS_BY_ARCH[ARCH];

// Open libc while the importing module is evaluated when FFI is already
// granted, so a user's `Deno.test` that is the first to touch an endpoint does
// not count the library against itself under `--sanitize-resources` ("a
// dynamic library was loaded during the test"). Without the permission, or
// on a platform that has no glibc, nothing happens here: the first call of
// `libc()` reports the problem.
if (Deno.permissions.querySync?.({ name: "ffi" }).state === "granted") {
  try {
    libc();
  } catch {
    // Reported again, with its cause, by the first real use.
  }
}
