/**
 * The one send queue: the calls of an endpoint that could not finish at
 * once, kept in call order and finished by one flush at a time with the
 * shared spin-then-park. Sockets and pipe writers queue their sends here;
 * a shared-memory queue end its sends and receives.
 *
 * A call that finds the queue {@linkcode CallQueue.clear} is tried at once
 * by its endpoint and settles without a promise chain (the hot path: no
 * allocation here). Only a call that has to wait becomes a job. What a job
 * is and how it moves on is the endpoint's ({@linkcode QueueHost}); the
 * queue keeps the order, waits, settles each job alone, and lets a blocking
 * call (`writeSync`, `sendSync`) finish the queue first so that bytes leave
 * in call order whichever form each call used.
 *
 * A call may carry an `AbortSignal`. Aborting it while the call waits gives
 * the call up with the signal's reason: a call that has not started is
 * taken out of the queue (nothing of it goes), and the calls behind it move
 * up. A call that has partly gone out (a stream write with some bytes in
 * the pipe) cannot be taken back: its promise rejects with the reason at
 * once, and the host keeps the rest ({@linkcode QueueHost.abandon}), which
 * still goes out ahead of later calls, so a byte stream is never torn.
 * {@linkcode CallQueue.cancel} gives up every queued call that way at once.
 *
 * @module
 */

import { type Spinner, untilReady } from "./ffi/spin.ts";

/** A queued call: the queue settles it through these. */
export interface QueuedCall<T> {
  /** Set by the queue when the call is queued. */
  resolve?: (value: T | PromiseLike<T>) => void;
  /** Set by the queue when the call is queued. */
  reject?: (error: unknown) => void;
  /** Aborting it gives the call up while it waits (see above). */
  signal?: AbortSignal;
  /** Set by the queue while it listens to `signal`. */
  onAbort?: () => void;
  /**
   * How a flush waits while this call is at the head when the wait starts
   * (a call's own `spin` option); the queue's own spinner when absent.
   */
  spinner?: Spinner;
}

/** What an endpoint tells its queue. */
export interface QueueHost<J extends QueuedCall<T>, T> {
  /**
   * Moves the queued calls on without waiting, from the head: how many of
   * them are now finished (the head alone, or a batch from it), 0 when the
   * head has to wait. A throw fails the head alone, so it may only come
   * from the head: a later call that fails ends the count instead.
   */
  advance(jobs: readonly J[]): number;
  /**
   * Waits until advancing may get further (room in the socket, a message
   * in the ring). A rejection fails `head` alone; the queue then looks
   * again. `signal`, when given, is aborted when the queue changed
   * meanwhile (a blocking call finished it, the head was given up); it is
   * given whenever the host has `finishBlocking` or the head has a signal.
   */
  park(head: J, signal: AbortSignal | undefined): Promise<void>;
  /**
   * Whether part of the call has gone out, so that it can no longer be
   * taken back. Absent: calls go whole or not at all.
   */
  started?(job: J): boolean;
  /**
   * The caller gave up a started call: keep what is needed to finish it
   * (copy the bytes left, as the caller may now reuse its buffer). A throw
   * fails the call with that error and takes it out of the queue.
   */
  abandon?(job: J): void;
  /** What a finished call resolves with. */
  done(job: J): T | PromiseLike<T>;
  /** What a failed call rejects with. */
  failed(job: J, error: unknown): unknown;
  /**
   * Finishes one call, blocking the thread: present on endpoints with
   * blocking forms, which call {@linkcode CallQueue.drainBlocking}.
   */
  finishBlocking?(job: J): void;
  /**
   * A turn of the event loop that a call made before the queued ones is
   * still yielding before it settles, if any: queued calls settle after
   * it, so that calls settle in the order they were made.
   */
  turn?(): Promise<void> | undefined;
}

/** The reason a park is aborted with when the queue changed under it. */
const LOOK_AGAIN = Symbol("look again");

/** What an abandoned call settles with: its caller was answered already. */
function ignore(): void {}

/** The calls of one endpoint that wait their turn, in call order. */
export class CallQueue<J extends QueuedCall<T>, T = void> {
  #host: QueueHost<J, T>;
  #spinner: Spinner;
  #jobs: J[] = [];
  /** Whether a flush is running (trying, spinning or parked). */
  #flushing = false;
  /** Whether calls of this turn are gathered for one flush. */
  #gathering = false;
  /** Whether the host is advancing (a settled call may call back). */
  #advancing = false;
  #parked: AbortController | undefined;
  /** The call the running park waits for. */
  #parkedHead: J | undefined;
  readonly #attempt = (): true | undefined => this.#advance() || undefined;
  readonly #park = (): Promise<void> => this.#parkHead();
  readonly #endGathering = (): void => {
    this.#gathering = false;
    this.#flush();
  };

  /**
   * @param host The endpoint's side of the queue.
   * @param spinner How a flush waits before it parks.
   */
  constructor(host: QueueHost<J, T>, spinner: Spinner) {
    this.#host = host;
    this.#spinner = spinner;
  }

  /** Whether a new call may go at once: nothing queued, nothing gathered. */
  get clear(): boolean {
    return this.#jobs.length === 0 && !this.#gathering;
  }

  /** How many calls wait. */
  get length(): number {
    return this.#jobs.length;
  }

  /**
   * Holds the flush until this turn's microtasks run, so that the calls
   * made meanwhile are advanced together (one `sendmmsg` for many
   * datagrams).
   */
  gather(): void {
    if (this.#gathering) return;
    this.#gathering = true;
    queueMicrotask(this.#endGathering);
  }

  /**
   * Queues `job` behind every earlier call; settles when it is done. The
   * flush starts once this turn's microtasks run, not inside the call: the
   * caller's own code goes on first (in one thread, it may be what the job
   * waits for), and calls made meanwhile are advanced with it.
   */
  push(job: J): Promise<T> {
    const { promise, resolve, reject } = Promise.withResolvers<T>();
    job.resolve = resolve;
    job.reject = reject;
    const { signal } = job;
    if (signal !== undefined) {
      if (signal.aborted) {
        this.#fail(job, signal.reason);
        return promise;
      }
      job.onAbort = () => this.#abort(job);
      signal.addEventListener("abort", job.onAbort, { once: true });
    }
    this.#jobs.push(job);
    this.gather();
    return promise;
  }

  /**
   * Finishes every queued call now, blocking the thread, in order; one
   * that fails rejects alone. A waiting flush is told to look again.
   */
  drainBlocking(): void {
    const jobs = this.#jobs;
    if (jobs.length === 0) return;
    const host = this.#host;
    try {
      while (jobs.length > 0) {
        const job = jobs.shift()!;
        try {
          host.finishBlocking!(job);
        } catch (error) {
          this.#fail(job, error);
          continue;
        }
        this.#finish(job);
      }
    } finally {
      this.#parked?.abort(LOOK_AGAIN);
    }
  }

  /**
   * Before the endpoint goes: calls that can finish now without waiting
   * still do (as they would have at once), the rest reject with `error`.
   */
  end(error: unknown): void {
    if (this.#jobs.length === 0) return;
    try {
      this.#advance();
    } catch {
      // Whatever is left fails below.
    }
    for (const job of this.#jobs.splice(0)) this.#fail(job, error);
  }

  /**
   * Gives up every queued call without trying it again: each rejects with
   * `error` and nothing more of it goes, except a call partly gone out,
   * which is given up as an aborted one is (its caller hears now, the rest
   * still goes). Called while the host advances (from a settle), it takes
   * effect right after.
   */
  cancel(error: unknown): void {
    if (this.#advancing) {
      queueMicrotask(() => this.cancel(error));
      return;
    }
    const jobs = this.#jobs;
    if (jobs.length === 0) return;
    // Only the head can have started: it alone may stay in line.
    const head = jobs[0];
    const rest = jobs.splice(this.#host.started?.(head) ? 1 : 0);
    if (rest[0] !== head) this.#giveUp(head, error);
    for (const job of rest) this.#fail(job, error);
    this.#parked?.abort(LOOK_AGAIN);
  }

  /**
   * Moves the queued calls on now, without waiting, as a flush would (a
   * waiting flush is told to look again). Whether none is left.
   */
  tryNow(): boolean {
    if (this.#jobs.length === 0) return true;
    const head = this.#jobs[0];
    const done = this.#advance();
    if (this.#jobs[0] !== head) this.#parked?.abort(LOOK_AGAIN);
    return done;
  }

  #flush(): void {
    if (this.#flushing || this.#jobs.length === 0) return;
    this.#flushing = true;
    this.#pump();
  }

  async #pump(): Promise<void> {
    const jobs = this.#jobs;
    while (jobs.length > 0) {
      try {
        await untilReady(
          this.#attempt,
          this.#park,
          jobs[0].spinner ?? this.#spinner,
        );
      } catch (error) {
        // A blocking call finished the queue meanwhile, or the call parked
        // for was given up: look again.
        if (error === LOOK_AGAIN || jobs[0] !== this.#parkedHead) continue;
        // The wait failed (the endpoint closed): that call fails, later
        // ones get their own look.
        this.#fail(jobs.shift()!, error);
      }
    }
    this.#flushing = false;
  }

  #parkHead(): Promise<void> {
    const head = this.#jobs[0];
    this.#parkedHead = head;
    if (this.#host.finishBlocking === undefined && head.signal === undefined) {
      return this.#host.park(head, undefined);
    }
    const parked = new AbortController();
    this.#parked = parked;
    return this.#host.park(head, parked.signal).finally(() => {
      if (this.#parked === parked) this.#parked = undefined;
    });
  }

  /** `job`'s signal was aborted while it waited. */
  #abort(job: J): void {
    if (this.#advancing) {
      // Not in the middle of moving the queue on: right after.
      queueMicrotask(() => this.#abort(job));
      return;
    }
    this.#giveUp(job, job.signal!.reason);
  }

  /**
   * Gives up `job` with `reason`: out of the queue if it has not started,
   * else it stays in line to finish and only its caller hears now.
   */
  #giveUp(job: J, reason: unknown): void {
    const jobs = this.#jobs;
    const at = jobs.indexOf(job);
    if (at === -1) return; // settled meanwhile
    if (this.#host.started?.(job)) {
      try {
        this.#host.abandon?.(job);
      } catch (error) {
        jobs.splice(at, 1);
        this.#fail(job, error);
        if (at === 0) this.#parked?.abort(LOOK_AGAIN);
        return;
      }
      // It stays in line to finish; its caller hears now.
      const reject = job.reject!;
      job.resolve = ignore;
      job.reject = ignore;
      this.#unlisten(job);
      reject(reason);
      return;
    }
    jobs.splice(at, 1);
    this.#fail(job, reason);
    if (at === 0) this.#parked?.abort(LOOK_AGAIN);
  }

  #unlisten(job: J): void {
    if (job.onAbort === undefined) return;
    job.signal!.removeEventListener("abort", job.onAbort);
    job.onAbort = undefined;
  }

  /** Advances what can go now; true once nothing is left. */
  #advance(): boolean {
    if (this.#advancing) return false;
    this.#advancing = true;
    const jobs = this.#jobs;
    try {
      while (jobs.length > 0) {
        let finished: number;
        try {
          finished = this.#host.advance(jobs);
        } catch (error) {
          this.#fail(jobs.shift()!, error);
          continue;
        }
        if (finished <= 0) return false;
        for (const job of jobs.splice(0, finished)) this.#finish(job);
      }
      return true;
    } finally {
      this.#advancing = false;
    }
  }

  #finish(job: J): void {
    this.#unlisten(job);
    let value: T | PromiseLike<T>;
    try {
      value = this.#host.done(job);
    } catch (error) {
      this.#settle(job, false, error);
      return;
    }
    this.#settle(job, true, value);
  }

  #fail(job: J, error: unknown): void {
    this.#unlisten(job);
    this.#settle(job, false, this.#host.failed(job, error));
  }

  #settle(job: J, ok: boolean, value: unknown): void {
    const turn = this.#host.turn?.();
    if (turn === undefined) {
      if (ok) job.resolve!(value as T | PromiseLike<T>);
      else job.reject!(value);
      return;
    }
    turn.then(() => this.#settle(job, ok, value));
  }
}
