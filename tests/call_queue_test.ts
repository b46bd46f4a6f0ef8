import assert from "node:assert/strict";
import { CallQueue, type QueuedCall, type QueueHost } from "../_call_queue.ts";
import { Spinner } from "../ffi/spin.ts";
import { until, withTimeout } from "./_util.ts";

interface Job extends QueuedCall<string> {
  name: string;
  fail?: Error;
}

/**
 * A host over a pretend fd with `room` free slots: each job takes one. A
 * park waits until `open()` is called (or the park's signal aborts).
 */
class FakeHost implements QueueHost<Job, string> {
  room = 0;
  batch = 1;
  sent: string[] = [];
  advances: string[][] = [];
  parks = 0;
  blocking: string[] = [];
  parkError: Error | undefined;
  /** Jobs that count as partly out. */
  partlyOut = new Set<string>();
  abandoned: string[] = [];
  abandonError: Error | undefined;
  #wake: PromiseWithResolvers<void> | undefined;

  advance(jobs: readonly Job[]): number {
    this.advances.push(jobs.map((j) => j.name));
    if (jobs[0].fail !== undefined) throw jobs[0].fail;
    let n = 0;
    while (n < jobs.length && n < this.batch && this.room > 0) {
      if (jobs[n].fail !== undefined) break;
      this.sent.push(jobs[n].name);
      this.room--;
      n++;
    }
    return n;
  }

  park(_head: Job, signal: AbortSignal | undefined): Promise<void> {
    this.parks++;
    if (this.parkError !== undefined) {
      const error = this.parkError;
      this.parkError = undefined;
      return Promise.reject(error);
    }
    this.#wake = Promise.withResolvers<void>();
    const { promise, reject } = this.#wake;
    signal?.addEventListener("abort", () => reject(signal.reason), {
      once: true,
    });
    return promise;
  }

  /** Makes room for `n` jobs and wakes a parked flush. */
  open(n: number): void {
    this.room += n;
    this.#wake?.resolve();
  }

  done(job: Job): string {
    return `${job.name} done`;
  }

  failed(job: Job, error: unknown): unknown {
    return new Error(`${job.name}: ${(error as Error).message}`);
  }

  started(job: Job): boolean {
    return this.partlyOut.has(job.name);
  }

  abandon(job: Job): void {
    if (this.abandonError !== undefined) throw this.abandonError;
    this.abandoned.push(job.name);
  }

  finishBlocking(job: Job): void {
    if (job.fail !== undefined) throw job.fail;
    this.blocking.push(job.name);
  }
}

function queue(host: FakeHost): CallQueue<Job, string> {
  return new CallQueue<Job, string>(host, new Spinner(0));
}

Deno.test("CallQueue: queued calls finish in call order, each with its own result", async () => {
  const host = new FakeHost();
  const q = queue(host);
  assert.equal(q.clear, true);
  const results = [q.push({ name: "a" }), q.push({ name: "b" })];
  assert.equal(q.clear, false);
  assert.equal(q.length, 2);
  host.open(2);
  assert.deepEqual(await withTimeout(Promise.all(results), 5000, "jobs"), [
    "a done",
    "b done",
  ]);
  assert.deepEqual(host.sent, ["a", "b"]);
  assert.equal(q.clear, true);
});

Deno.test("CallQueue: the flush starts after the caller's turn, not inside push()", async () => {
  const host = new FakeHost();
  host.room = 5;
  const q = queue(host);
  const a = q.push({ name: "a" });
  // Nothing was tried yet: the caller's own code runs first.
  assert.deepEqual(host.advances, []);
  const b = q.push({ name: "b" });
  await withTimeout(Promise.all([a, b]), 5000, "jobs");
  assert.deepEqual(host.sent, ["a", "b"]);
});

Deno.test("CallQueue: calls gathered in one turn are advanced together", async () => {
  const host = new FakeHost();
  host.room = 10;
  host.batch = 10;
  const q = queue(host);
  q.gather();
  assert.equal(q.clear, false);
  const all = ["a", "b", "c"].map((name) => q.push({ name }));
  await withTimeout(Promise.all(all), 5000, "jobs");
  assert.deepEqual(host.advances, [["a", "b", "c"]]);
});

Deno.test("CallQueue: a call that fails rejects alone; the ones after it go on", async () => {
  const host = new FakeHost();
  host.room = 10;
  const q = queue(host);
  const a = q.push({ name: "a" });
  const b = q.push({ name: "b", fail: new Error("refused") });
  const c = q.push({ name: "c" });
  assert.equal(await a, "a done");
  await assert.rejects(b, /^Error: b: refused$/);
  assert.equal(await c, "c done");
  assert.deepEqual(host.sent, ["a", "c"]);
});

Deno.test("CallQueue: a failed wait fails the head only; the next call gets its own wait", async () => {
  const host = new FakeHost();
  const q = queue(host);
  host.parkError = new Error("wait aborted");
  const a = q.push({ name: "a" });
  const b = q.push({ name: "b" });
  await assert.rejects(a, /a: wait aborted/);
  // b is parked now.
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(host.parks, 2);
  host.open(1);
  assert.equal(await withTimeout(b, 5000, "b"), "b done");
});

Deno.test("CallQueue: drainBlocking finishes queued calls in order and a parked flush looks again", async () => {
  const host = new FakeHost();
  const q = queue(host);
  const a = q.push({ name: "a" });
  const b = q.push({ name: "b", fail: new Error("gone") });
  const c = q.push({ name: "c" });
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(host.parks, 1);
  q.drainBlocking();
  assert.deepEqual(host.blocking, ["a", "c"]);
  assert.equal(q.length, 0);
  assert.equal(await a, "a done");
  await assert.rejects(b, /b: gone/);
  assert.equal(await c, "c done");
  // The aborted park was not taken for a failure, and nothing is parked.
  const d = q.push({ name: "d" });
  host.open(1);
  assert.equal(await withTimeout(d, 5000, "d"), "d done");
});

Deno.test("CallQueue: end() lets what fits now go and rejects the rest with its error", async () => {
  const host = new FakeHost();
  const q = queue(host);
  const a = q.push({ name: "a" });
  const b = q.push({ name: "b" });
  host.room = 1;
  q.end(new Error("closed"));
  assert.equal(await a, "a done");
  await assert.rejects(b, /b: closed/);
  assert.equal(q.length, 0);
});

Deno.test("CallQueue: a settle that ends the queue from inside an advance leaves it consistent", async () => {
  const host = new FakeHost();
  host.room = 10;
  const q = queue(host);
  const original = host.done.bind(host);
  host.done = (job) => {
    // As a send whose closeSent closes the socket itself.
    if (job.name === "a") q.end(new Error("closed"));
    return original(job);
  };
  const a = q.push({ name: "a" });
  const b = q.push({ name: "b" });
  assert.equal(await a, "a done");
  // b was still queued when a's settle ended the queue: it fails with the
  // end's error, once, and is never sent after it.
  await assert.rejects(withTimeout(b, 5000, "b"), /b: closed/);
  assert.deepEqual(host.sent, ["a"]);
  assert.equal(q.length, 0);
});

Deno.test("CallQueue: calls that finish while an earlier call yields its turn settle after that turn", async () => {
  const host = new FakeHost();
  host.room = 5;
  const turn = Promise.withResolvers<void>();
  let pending: Promise<void> | undefined = turn.promise;
  (host as QueueHost<Job, string>).turn = () => pending;
  const q = queue(host);
  const order: string[] = [];
  const a = q.push({ name: "a" }).then((v) => order.push(v));
  const b = q.push({ name: "b", fail: new Error("refused") }).catch(() =>
    order.push("b failed")
  );
  // Both are advanced at once, but neither settles before the turn.
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.deepEqual(host.sent, ["a"]);
  assert.equal(order.length, 0);
  order.push("turn");
  pending = undefined;
  turn.resolve();
  await withTimeout(Promise.all([a, b]), 5000, "settle");
  assert.deepEqual(order, ["turn", "a done", "b failed"]);
});

/** Lets the queue's flush run up to its park. */
function settle(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

Deno.test("CallQueue: a call whose signal aborts before it starts leaves the queue; the calls around it go on", async () => {
  const host = new FakeHost();
  const q = queue(host);
  const controller = new AbortController();
  const a = q.push({ name: "a" });
  const b = q.push({ name: "b", signal: controller.signal });
  const c = q.push({ name: "c" });
  await settle();
  assert.equal(host.parks, 1);
  controller.abort(new Error("gave up"));
  // The host says what a failed call rejects with; this one names it.
  await assert.rejects(b, /^Error: b: gave up$/);
  assert.equal(q.length, 2);
  host.open(3);
  assert.deepEqual(
    await withTimeout(Promise.all([a, c]), 5000, "a and c"),
    ["a done", "c done"],
  );
  assert.deepEqual(host.sent, ["a", "c"]);
  assert.deepEqual(host.abandoned, []);
});

Deno.test("CallQueue: aborting the parked head rejects it at once and the flush parks for the next call", async () => {
  const host = new FakeHost();
  const q = queue(host);
  const controller = new AbortController();
  const a = q.push({ name: "a", signal: controller.signal });
  const b = q.push({ name: "b" });
  await settle();
  assert.equal(host.parks, 1);
  controller.abort(new Error("timed out"));
  await assert.rejects(a, /^Error: a: timed out$/);
  await settle();
  assert.equal(host.parks, 2, "parked again, for b");
  host.open(1);
  assert.equal(await withTimeout(b, 5000, "b"), "b done");
  assert.deepEqual(host.sent, ["b"]);
});

Deno.test("CallQueue: a started call whose signal aborts rejects at once, yet still finishes ahead of later calls", async () => {
  const host = new FakeHost();
  const q = queue(host);
  const controller = new AbortController();
  host.partlyOut.add("a");
  const a = q.push({ name: "a", signal: controller.signal });
  const b = q.push({ name: "b" });
  await settle();
  const reason = new Error("gave up");
  controller.abort(reason);
  await assert.rejects(a, (error) => error === reason);
  assert.deepEqual(host.abandoned, ["a"]);
  assert.equal(q.length, 2, "a stays in line to finish");
  host.open(2);
  assert.equal(await withTimeout(b, 5000, "b"), "b done");
  assert.deepEqual(host.sent, ["a", "b"]);
  assert.equal(q.length, 0);
});

Deno.test("CallQueue: a started call that cannot be kept fails with the host's error and leaves the queue", async () => {
  const host = new FakeHost();
  const q = queue(host);
  const controller = new AbortController();
  host.partlyOut.add("a");
  host.abandonError = new Error("buffer gone");
  const a = q.push({ name: "a", signal: controller.signal });
  const b = q.push({ name: "b" });
  await settle();
  controller.abort(new Error("gave up"));
  await assert.rejects(a, /^Error: a: buffer gone$/);
  host.open(1);
  assert.equal(await withTimeout(b, 5000, "b"), "b done");
  assert.deepEqual(host.sent, ["b"]);
});

Deno.test("CallQueue: a call pushed with an aborted signal rejects with its reason and queues nothing", async () => {
  const host = new FakeHost();
  host.room = 5;
  const q = queue(host);
  const reason = new Error("already");
  const a = q.push({ name: "a", signal: AbortSignal.abort(reason) });
  assert.equal(q.length, 0);
  await assert.rejects(a, /^Error: a: already$/);
  assert.deepEqual(host.advances, []);
});

Deno.test("CallQueue: a settled call no longer listens to its signal", async () => {
  const host = new FakeHost();
  host.room = 5;
  const q = queue(host);
  const controller = new AbortController();
  const job: Job = { name: "a", signal: controller.signal };
  const a = q.push(job);
  assert.equal(await withTimeout(a, 5000, "a"), "a done");
  assert.equal(job.onAbort, undefined, "its abort listener was removed");
  // An abort after the call settled changes nothing (no double settle, no
  // throw from a stale listener).
  controller.abort(new Error("late"));
  const b = q.push({ name: "b" });
  assert.equal(await withTimeout(b, 5000, "b"), "b done");
  assert.deepEqual(host.sent, ["a", "b"]);
});

/** A spinner that never spins and counts how often a flush asked it. */
class CountingSpinner extends Spinner {
  asked = 0;
  constructor() {
    super(0);
  }
  override spin<T>(attempt: () => T | undefined): T | undefined {
    this.asked++;
    return super.spin(attempt);
  }
}

Deno.test("CallQueue: a flush waits with the head's own spinner, else with the queue's", async () => {
  const host = new FakeHost();
  const own = new CountingSpinner();
  const mine = new CountingSpinner();
  const q = new CallQueue<Job, string>(host, own);
  const a = q.push({ name: "a", spinner: mine });
  await settle();
  assert.equal(host.parks, 1);
  assert.equal(mine.asked, 1, "the head's spinner before its park");
  assert.equal(own.asked, 0);
  host.open(1);
  assert.equal(await withTimeout(a, 5000, "a"), "a done");
  const b = q.push({ name: "b" });
  await settle();
  assert.equal(host.parks, 2);
  assert.equal(own.asked, 1, "no spinner of its own: the queue's");
  assert.equal(mine.asked, 1);
  host.open(1);
  assert.equal(await withTimeout(b, 5000, "b"), "b done");
});

Deno.test("CallQueue: cancel() rejects every queued call without trying it again, and a parked flush looks again", async () => {
  const host = new FakeHost();
  const q = queue(host);
  const controller = new AbortController();
  const a = q.push({ name: "a", signal: controller.signal });
  const b = q.push({ name: "b" });
  await settle();
  assert.equal(host.parks, 1);
  const tried = host.advances.length;
  host.room = 5;
  q.cancel(new Error("closed"));
  assert.equal(q.length, 0);
  await assert.rejects(a, /^Error: a: closed$/);
  await assert.rejects(b, /^Error: b: closed$/);
  assert.equal(host.advances.length, tried, "cancel() sends nothing");
  assert.deepEqual(host.sent, []);
  // The parked flush stopped: a new call gets a flush of its own.
  const c = q.push({ name: "c" });
  assert.equal(await withTimeout(c, 5000, "c"), "c done");
  assert.deepEqual(host.sent, ["c"]);
});

Deno.test("CallQueue: cancel() keeps a started head in line to finish; its caller hears at once", async () => {
  const host = new FakeHost();
  const q = queue(host);
  host.partlyOut.add("a");
  const a = q.push({ name: "a" });
  const b = q.push({ name: "b" });
  await settle();
  const reason = new Error("closed");
  q.cancel(reason);
  await assert.rejects(a, (error) => error === reason);
  await assert.rejects(b, /^Error: b: closed$/);
  assert.deepEqual(host.abandoned, ["a"]);
  assert.equal(q.length, 1, "a stays to finish");
  host.open(1);
  await until(() => q.length === 0, 5000, "a to finish");
  assert.deepEqual(host.sent, ["a"]);
});

Deno.test("CallQueue: cancel() from inside an advance takes effect right after it", async () => {
  const host = new FakeHost();
  host.room = 1;
  const q = queue(host);
  const original = host.advance.bind(host);
  host.advance = (jobs) => {
    // As a host that learns while sending that its endpoint is over.
    const sent = original(jobs);
    if (jobs[0].name === "a") q.cancel(new Error("closed"));
    return sent;
  };
  const a = q.push({ name: "a" });
  const b = q.push({ name: "b" });
  // a went out before the cancel: it is done, not cancelled.
  assert.equal(await withTimeout(a, 5000, "a"), "a done");
  await assert.rejects(withTimeout(b, 5000, "b"), /^Error: b: closed$/);
  assert.deepEqual(host.sent, ["a"]);
  assert.equal(q.length, 0);
});

Deno.test("CallQueue: tryNow() moves the queue on at once and the parked flush looks again", async () => {
  const host = new FakeHost();
  host.batch = 5;
  const q = queue(host);
  assert.equal(q.tryNow(), true, "nothing queued");
  const a = q.push({ name: "a" });
  const b = q.push({ name: "b" });
  await settle();
  assert.equal(host.parks, 1);
  assert.equal(q.tryNow(), false, "no room yet");
  host.room = 1;
  assert.equal(q.tryNow(), false, "room for a only");
  assert.deepEqual(host.sent, ["a"]);
  assert.equal(await a, "a done");
  // The flush parked for a now parks for b.
  await settle();
  assert.equal(host.parks, 2);
  host.room = 1;
  assert.equal(q.tryNow(), true);
  assert.equal(await withTimeout(b, 5000, "b"), "b done");
  assert.deepEqual(host.sent, ["a", "b"]);
});
