/*
 * The machine's raw limits for the cross-process benchmarks, built at bench
 * time by bench/_baselines.ts (cc -O2) into bench/.build/. Plain C with
 * blocking read/write and a fork()ed peer: what no runtime can beat.
 *
 *   baseline throughput pipe|socketpair BYTES CHUNK [PIPE_CAPACITY]
 *     The child writes BYTES in CHUNK-sized writes; the parent reads with a
 *     CHUNK-sized buffer until EOF.
 *   baseline pingpong seqpacket|stream|pipe COUNT SIZE
 *     The parent sends SIZE bytes, the child echoes them, COUNT times.
 *
 * Prints one line of JSON on stdout, such as
 *   {"mode":"throughput","kind":"pipe","bytes":1073741824,"seconds":0.41,"mibps":2497.6}
 *   {"mode":"pingpong","kind":"seqpacket","count":10000,"seconds":0.12,"p50_us":11.2,"p99_us":19.8,"msgps":83000.1}
 * Exits 2 on a usage error, 1 when a system call fails.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what) {
  fprintf(stderr, "baseline: %s: %s\n", what, strerror(errno));
  exit(1);
}

static int usage(void) {
  fprintf(stderr,
          "usage: baseline throughput pipe|socketpair BYTES CHUNK [PIPE_CAPACITY]\n"
          "       baseline pingpong seqpacket|stream|pipe COUNT SIZE\n");
  return 2;
}

static void write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("write");
    }
    buf += n;
    len -= (size_t)n;
  }
}

static void read_exact(int fd, char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = read(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("read");
    }
    if (n == 0) {
      fprintf(stderr, "baseline: unexpected EOF\n");
      exit(1);
    }
    buf += n;
    len -= (size_t)n;
  }
}

static void reap(pid_t pid) {
  int status;
  if (waitpid(pid, &status, 0) < 0) die("waitpid");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "baseline: the child failed\n");
    exit(1);
  }
}

static int throughput(const char *kind, long long bytes, size_t chunk,
                      int capacity) {
  int fds[2];
  if (strcmp(kind, "pipe") == 0) {
    if (pipe2(fds, O_CLOEXEC) < 0) die("pipe2");
    if (capacity > 0 && fcntl(fds[1], F_SETPIPE_SZ, capacity) < 0)
      die("fcntl(F_SETPIPE_SZ)");
  } else if (strcmp(kind, "socketpair") == 0) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
      die("socketpair");
    fds[0] = sv[0];
    fds[1] = sv[1];
  } else {
    return usage();
  }
  char *buf = malloc(chunk);
  if (buf == NULL) die("malloc");
  memset(buf, 0, chunk);

  double start = now();
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    close(fds[0]);
    long long left = bytes;
    while (left > 0) {
      size_t n = left < (long long)chunk ? (size_t)left : chunk;
      write_all(fds[1], buf, n);
      left -= (long long)n;
    }
    _exit(0);
  }
  close(fds[1]);
  long long total = 0;
  for (;;) {
    ssize_t n = read(fds[0], buf, chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("read");
    }
    if (n == 0) break;
    total += n;
  }
  double seconds = now() - start;
  reap(pid);
  if (total != bytes) {
    fprintf(stderr, "baseline: read %lld bytes, expected %lld\n", total, bytes);
    return 1;
  }
  printf("{\"mode\":\"throughput\",\"kind\":\"%s\",\"bytes\":%lld,"
         "\"seconds\":%.6f,\"mibps\":%.1f}\n",
         kind, total, seconds, (double)total / 1048576.0 / seconds);
  return 0;
}

static int compare(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Linear interpolation between closest ranks, as bench/_report.ts does. */
static double percentile(const double *sorted, long count, double p) {
  double rank = p / 100.0 * (double)(count - 1);
  long low = (long)rank;
  long high = low + 1 < count ? low + 1 : low;
  return sorted[low] + (sorted[high] - sorted[low]) * (rank - (double)low);
}

static int pingpong(const char *kind, long count, size_t size) {
  int parent_fd, child_fd, parent_wfd, child_wfd;
  if (strcmp(kind, "pipe") == 0) {
    int a[2], b[2];
    if (pipe2(a, O_CLOEXEC) < 0 || pipe2(b, O_CLOEXEC) < 0) die("pipe2");
    parent_fd = b[0];
    parent_wfd = a[1];
    child_fd = a[0];
    child_wfd = b[1];
  } else {
    int type;
    if (strcmp(kind, "seqpacket") == 0) {
      type = SOCK_SEQPACKET;
    } else if (strcmp(kind, "stream") == 0) {
      type = SOCK_STREAM;
    } else {
      return usage();
    }
    int sv[2];
    if (socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair");
    parent_fd = parent_wfd = sv[0];
    child_fd = child_wfd = sv[1];
  }
  char *buf = malloc(size);
  double *rtts = malloc(sizeof(double) * (size_t)count);
  if (buf == NULL || rtts == NULL) die("malloc");
  memset(buf, 7, size);

  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    for (long i = 0; i < count; i++) {
      read_exact(child_fd, buf, size);
      write_all(child_wfd, buf, size);
    }
    _exit(0);
  }
  double start = now();
  for (long i = 0; i < count; i++) {
    double t0 = now();
    write_all(parent_wfd, buf, size);
    read_exact(parent_fd, buf, size);
    rtts[i] = (now() - t0) * 1e6;
  }
  double seconds = now() - start;
  reap(pid);
  qsort(rtts, (size_t)count, sizeof(double), compare);
  printf("{\"mode\":\"pingpong\",\"kind\":\"%s\",\"count\":%ld,"
         "\"seconds\":%.6f,\"p50_us\":%.3f,\"p99_us\":%.3f,\"msgps\":%.1f}\n",
         kind, count, seconds, percentile(rtts, count, 50),
         percentile(rtts, count, 99), (double)count / seconds);
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_DFL);
  if (argc >= 5 && strcmp(argv[1], "throughput") == 0) {
    long long bytes = atoll(argv[3]);
    long chunk = atol(argv[4]);
    int capacity = argc >= 6 ? atoi(argv[5]) : 0;
    if (bytes <= 0 || chunk <= 0) return usage();
    return throughput(argv[2], bytes, (size_t)chunk, capacity);
  }
  if (argc == 5 && strcmp(argv[1], "pingpong") == 0) {
    long count = atol(argv[3]);
    long size = atol(argv[4]);
    if (count <= 0 || size <= 0) return usage();
    return pingpong(argv[2], count, (size_t)size);
  }
  return usage();
}
