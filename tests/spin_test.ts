import assert from "node:assert/strict";
import { checkSpin, Spinner, untilReady, waitLoop } from "../ffi/spin.ts";
import { test } from "./_util.ts";

/** An attempt that answers on its `answerAt`-th call (never when 0). */
function counted(
  answerAt = 0,
): { attempt: () => number | undefined; calls: number } {
  const state = {
    calls: 0,
    attempt: () => {
      state.calls++;
      return answerAt > 0 && state.calls >= answerAt ? state.calls : undefined;
    },
  };
  return state;
}

/** Busy-waits `us` µs. */
function busy(us: number): void {
  const end = performance.now() + us / 1000;
  while (performance.now() < end) { /* the peer is slow */ }
}

test("spin: 0 never calls the attempt; a fixed budget always spins", () => {
  const off = new Spinner(0);
  assert.equal(off.off, true);
  const never = counted();
  assert.equal(off.spin(never.attempt), undefined);
  assert.equal(never.calls, 0);

  const fixed = new Spinner(20);
  for (let round = 0; round < 3; round++) {
    const miss = counted();
    assert.equal(fixed.spin(miss.attempt), undefined);
    assert.ok(miss.calls > 0, "a fixed budget spun in every wait");
  }
  // An answer on the first call: one sched_yield() on a busy machine can
  // outlast a 20 µs budget.
  assert.equal(fixed.spin(counted(1).attempt), 1);
});

test("the adaptive spin backs off 2, 4, 8 waits after misses; fast hits bring it down a step per two", () => {
  // A clock of 1 µs per pass: on a busy machine one real sched_yield() can
  // last a scheduler slice, which counts as a miss.
  const spinner = new Spinner(undefined, 1, fakeClock(1));
  const parkedFor = (n: number) => {
    for (let k = 0; k < n; k++) {
      const skipped = counted();
      assert.equal(spinner.spin(skipped.attempt), undefined);
      assert.equal(skipped.calls, 0, `wait ${k + 1} of ${n} spun`);
    }
  };
  const missed = () => {
    const probe = counted();
    assert.equal(spinner.spin(probe.attempt), undefined);
    assert.ok(probe.calls > 0, "no probe");
  };
  // Answered on the first pass: a fast hit.
  const hit = () => assert.equal(spinner.spin(counted(1).attempt), 1);
  missed();
  parkedFor(2);
  missed();
  parkedFor(4);
  missed();
  parkedFor(8);
  // Three steps of back-off. One fast hit: the next wait spins too; a
  // second: a step down, and the waiter rests for as long as that step says.
  hit();
  hit();
  parkedFor(4);
  hit();
  hit();
  parkedFor(2);
  hit();
  hit();
  // Back-off over: every wait spins.
  for (let k = 0; k < 20; k++) hit();
  // After that run of hits one miss is a hiccup; a second backs off again.
  missed();
  missed();
  parkedFor(2);
});

test("a paced peer that answers every other probe leaves the adaptive spin resting longer and longer", () => {
  // Messages one per ms, now and then two close together (a late timer):
  // half of the probes are answered at once, the other half miss. The
  // spinner must not probe every few waits (10 to 20 µs of CPU per message
  // when each miss spins its whole budget).
  const spinner = new Spinner(undefined, 1, fakeClock(1));
  let spins = 0;
  let answer = false;
  let longestRest = 0;
  let rest = 0;
  for (let k = 0; k < 2_000; k++) {
    const wait = counted(answer ? 1 : 0);
    spinner.spin(wait.attempt);
    if (wait.calls === 0) {
      rest++;
      continue;
    }
    longestRest = Math.max(longestRest, rest);
    rest = 0;
    spins++;
    answer = !answer;
  }
  assert.ok(spins <= 40, `${spins} of 2,000 waits spun`);
  assert.ok(longestRest >= 128, `longest rest ${longestRest} waits`);
});

/**
 * A clock that moves `stepUs` µs each time it is read: spins take no real
 * time. The clock is read once per pass (and once at the start), so a step
 * is what one pass of a spin appears to take.
 */
function fakeClock(stepUs = 1): () => number {
  let ms = 0;
  return () => (ms += stepUs / 1000);
}

/** How many of `waits` waits of `spinner` parked without spinning. */
function parkedWaits(spinner: Spinner, waits: number, answerAt: number) {
  let skipped = 0;
  for (let k = 0; k < waits; k++) {
    const wait = counted(answerAt);
    spinner.spin(wait.attempt);
    if (wait.calls === 0) skipped++;
  }
  return skipped;
}

test("the adaptive spin stops for a peer that answers slowly every time", () => {
  // Each answer comes on the 91st pass, 91 µs into the spin, each pass
  // burning its µs: a parked peer being woken while this waiter spins. Four
  // such slow hits in a row end the spinning.
  const spinner = new Spinner(undefined, 1, fakeClock(1));
  const skipped = parkedWaits(spinner, 12, 91);
  assert.ok(skipped >= 2, `${skipped} of 12 waits parked without spinning`);
});

test("the adaptive spin goes on for answers that take long but few passes (its yields handed the CPU away)", () => {
  // Each answer comes on the 9th pass, 90 µs into the spin: each
  // sched_yield() let another thread run for 10 µs (the peer on this core,
  // a CPU-bound process), so the spin burned little CPU. Every wait spins.
  const spinner = new Spinner(undefined, 1, fakeClock(10));
  assert.equal(parkedWaits(spinner, 40, 9), 0);
  // The same 90 µs in 91 passes is slow: the spinning ends.
  const burning = new Spinner(undefined, 1, fakeClock(90 / 91));
  assert.ok(parkedWaits(burning, 12, 91) >= 2);
  // One yield that lasted 1.1 ms gave the CPU away for a whole scheduler
  // slice: the answer is taken, and counts as a miss (the spinner backs
  // off), where a parked wait would have been woken at once.
  const sliced = new Spinner(undefined, 1, fakeClock(1_100));
  assert.equal(sliced.spin(counted(1).attempt), 1);
  assert.equal(sliced.resting, true);
});

test("cheap late hits between misses let the back-off grow; a run of them ends it", () => {
  // Each pass appears to take 10 µs: a hit on the 9th pass came 90 µs
  // late but cheap (its yields handed the CPU away).
  const spinner = new Spinner(undefined, 1, fakeClock(10));
  const parkedNow = () => {
    let parked = 0;
    while (spinner.resting) {
      const wait = counted();
      spinner.spin(wait.attempt);
      assert.equal(wait.calls, 0, "a resting wait spun");
      parked++;
    }
    return parked;
  };
  assert.equal(spinner.spin(counted().attempt), undefined);
  assert.equal(parkedNow(), 2);
  assert.equal(spinner.spin(counted(9).attempt), 9);
  // One cheap hit between two misses: the back-off doubles (a paced
  // peer's answer now and then does not make it probe every few waits).
  assert.equal(spinner.spin(counted().attempt), undefined);
  assert.equal(parkedNow(), 4);
  // Four in a row end it, as a fast hit would.
  for (let k = 0; k < 4; k++) assert.equal(spinner.spin(counted(9).attempt), 9);
  assert.equal(spinner.spin(counted().attempt), undefined);
  assert.equal(parkedNow(), 2);
});

test("untilReady tries, spins, then parks until the attempt answers", async () => {
  let ready = false;
  let parks = 0;
  const attempt = () => ready ? "done" : undefined;
  const result = await untilReady(attempt, () => {
    parks++;
    busy(1);
    if (parks === 3) ready = true;
    return Promise.resolve();
  }, new Spinner(0));
  assert.equal(result, "done");
  assert.equal(parks, 3);
});

test("waitLoop looks again inside each wake-up's ready() and settles its one promise with what settle makes", async () => {
  const peer: { answer?: string } = {};
  let looks = 0;
  const readies: (() => void)[] = [];
  const ended: string[] = [];
  const done = waitLoop<string, string>(
    () => {
      looks++;
      return peer.answer;
    },
    (ready) => readies.push(ready),
    new Spinner(0),
    true,
    (value) => `settled ${value}`,
    () => ended.push("ended"),
  );
  // Tried by the caller: no look before the first park.
  assert.equal(looks, 0);
  assert.equal(readies.length, 1);
  // A wake-up that finds nothing parks again, right there.
  readies[0]();
  assert.equal(looks, 1);
  assert.equal(readies.length, 2);
  assert.deepEqual(ended, []);
  peer.answer = "m";
  readies[1]();
  assert.equal(looks, 2);
  assert.equal(readies.length, 2, "no park after the answer");
  // ended ran before the promise settled, once.
  assert.deepEqual(ended, ["ended"]);
  assert.equal(await done, "settled m");
  // A late ready() (a stale wake-up) changes nothing.
  readies[1]();
  assert.deepEqual(ended, ["ended"]);

  // Not tried: the first look comes before any park; settle may defer.
  const now = await waitLoop(
    () => 7,
    () => assert.fail("parked with an answer there"),
    new Spinner(0),
    false,
    (value) => Promise.resolve(value * 2),
  );
  assert.equal(now, 14);
});

test("waitLoop rejects once, after ended, when the attempt, settle or park fails", async () => {
  const boom = new Error("boom");
  for (
    const make of [
      // The attempt throws on the wake-up's look.
      () => {
        let calls = 0;
        return {
          attempt: () => {
            if (++calls > 1) throw boom;
            return undefined;
          },
          settle: (v: number) => v,
        };
      },
      // settle throws.
      () => ({
        attempt: () => 1,
        settle: (_: number): number => {
          throw boom;
        },
      }),
    ]
  ) {
    const { attempt, settle } = make();
    let ended = 0;
    let ready: (() => void) | undefined;
    const done = waitLoop(
      attempt,
      (r) => ready = r,
      new Spinner(0),
      false,
      settle,
      () => ended++,
    );
    ready?.();
    await assert.rejects(done, (error) => error === boom);
    assert.equal(ended, 1);
  }
  // park fails at once (the fd is closed), and a later fail is ignored.
  let ended = 0;
  let failLater: ((error: unknown) => void) | undefined;
  const done = waitLoop(
    () => undefined,
    (_ready, fail) => {
      failLater = fail;
      fail(boom);
    },
    new Spinner(0),
    true,
    (v) => v,
    () => ended++,
  );
  failLater!(new Error("second"));
  await assert.rejects(done, (error) => error === boom);
  assert.equal(ended, 1);
});

test("checkSpin accepts undefined, 0 and µs up to a second, and names what is wrong", () => {
  assert.equal(checkSpin(undefined, "read"), undefined);
  assert.equal(checkSpin(0, "read"), 0);
  assert.equal(checkSpin(50, "read"), 50);
  assert.throws(() => checkSpin("50", "read"), TypeError);
  for (const bad of [-1, Number.NaN, Infinity, 1_000_001]) {
    assert.throws(
      () => checkSpin(bad, "read"),
      (error: Error) =>
        error instanceof RangeError && error.message.startsWith("read:"),
    );
  }
});

test("an adaptive spinner rests while it backs off, and never with a fixed budget", () => {
  const spinner = new Spinner(undefined, 1, fakeClock(1));
  assert.equal(spinner.resting, false, "a new spinner probes first");
  assert.equal(spinner.spin(counted().attempt), undefined); // a miss
  assert.equal(spinner.resting, true, "it parks straight away after a miss");
  assert.equal(spinner.spin(counted().attempt), undefined);
  assert.equal(spinner.resting, true);
  assert.equal(spinner.spin(counted().attempt), undefined);
  assert.equal(spinner.resting, false, "the back-off of 2 waits is over");
  assert.equal(spinner.spin(counted(1).attempt), 1);
  assert.equal(spinner.resting, false, "a fast hit keeps it spinning");
  assert.equal(new Spinner(0).resting, false);
  assert.equal(new Spinner(50).resting, false);
});

test("one miss after a long run of fast hits is a hiccup: the next wait probes; a second miss backs off", () => {
  const spinner = new Spinner(undefined, 1, fakeClock());
  for (let k = 0; k < 16; k++) {
    assert.equal(spinner.spin(counted(1).attempt), 1, `fast hit ${k + 1}`);
  }
  assert.equal(spinner.spin(counted().attempt), undefined); // the hiccup
  assert.equal(spinner.resting, false, "no back-off after one miss");
  const probe = counted();
  assert.equal(spinner.spin(probe.attempt), undefined);
  assert.ok(probe.calls > 0, "the wait after the hiccup spun");
  assert.equal(spinner.resting, true, "a second miss in a row backs off");

  // A short run of hits does not earn that: its miss backs off at once.
  const fresh = new Spinner(undefined, 1, fakeClock());
  for (let k = 0; k < 3; k++) fresh.spin(counted(1).attempt);
  assert.equal(fresh.spin(counted().attempt), undefined);
  assert.equal(fresh.resting, true);
});

test("a spinner with several looks per yield tries that many times per pass", () => {
  // The clock is read once per pass (and once at the start).
  let reads = 0;
  const clock = fakeClock();
  const counting = () => {
    reads++;
    return clock();
  };
  const many = new Spinner(undefined, 16, counting);
  assert.equal(many.spin(counted(16).attempt), 16);
  assert.equal(reads, 2, "16 looks took one pass");
  reads = 0;
  const one = new Spinner(undefined, 1, counting);
  assert.equal(one.spin(counted(16).attempt), 16);
  assert.equal(reads, 17, "one look per pass");
  const off = new Spinner(0, 16, counting);
  const never = counted();
  assert.equal(off.spin(never.attempt), undefined);
  assert.equal(never.calls, 0, "spin: 0 never looks, whatever the looks");
});
