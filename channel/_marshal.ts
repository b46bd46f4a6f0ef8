/**
 * Endpoints inside channel values: on the way out, {@linkcode Outgoing}
 * writes each endpoint as its kind and the index of an fd that travels with
 * the frame; on the way in, {@linkcode Incoming} makes each endpoint again
 * from the fds that came, checking every index, count and fd kind.
 *
 * @module
 */

import { invalid } from "../_channel_error.ts";
import { endpointFd } from "../ffi/errors.ts";
import { dupCloexec, OwnedFd } from "../ffi/fd.ts";
import { closeAll } from "../_scm.ts";
import {
  checkBatch,
  INLINE_MAX,
  MAX_FDS,
  seqpacketProblem,
  socketIdentity,
} from "../_channel_wire.ts";
import { type EndpointKind, givenAway, kindOf } from "../_keys.ts";
import { adoptReceived } from "../_received.ts";
import type { Reader, Writer } from "./_codec_bytes.ts";
import type { EndpointHooks } from "./_codec_tags.ts";
import {
  type Connection,
  connectionProblem,
  MAX_CAPACITY,
  MAX_PUSHED,
  MODE_BYTES,
  notSeqpacket,
  pushedLimit,
  pushedRoom,
} from "./_connection.ts";
import { beginMove, endMove, receiverMode, senderMode } from "./_keys.ts";

/** The value codec's number of each kind of endpoint. */
const KIND: Readonly<Record<EndpointKind, number>> = {
  PipeReader: 1,
  PipeWriter: 2,
  UnixSocket: 3,
  UnixListener: 4,
  SharedMemory: 5,
  ShmSender: 6,
  ShmReceiver: 7,
  Sender: 8,
  Receiver: 9,
};

/**
 * The kinds that travel as one fd, at their number (channel ends travel
 * their own way).
 */
const ONE_FD: readonly (EndpointKind | undefined)[] = [
  undefined,
  "PipeReader",
  "PipeWriter",
  "UnixSocket",
  "UnixListener",
  "SharedMemory",
  "ShmSender",
  "ShmReceiver",
];

/** What a message takes of a Sender in it: a clone of it travels. */
interface SenderEnd {
  readonly [senderMode]: number;
  readonly rawFd: number;
  readonly capacity: number;
  clone(): SenderEnd;
  close(): void;
}

/** What a message takes of a Receiver in it: its connections move. */
interface ReceiverEnd {
  readonly [receiverMode]: number | undefined;
  [beginMove](): readonly Connection[];
  [endMove](sent: boolean): void;
}

/**
 * The most bytes of a value's tree that one fd's worth of endpoint takes:
 * a moved receiver's connection (five varints of at most 8 bytes and what
 * was left of one packet), its receiver's own two. Decoding charges an
 * endpoint a fixed cost, whatever it takes here.
 */
export const ENDPOINT_BYTES = INLINE_MAX + 64;

/**
 * How {@linkcode Incoming} makes the channel ends of a value (their
 * modules import this one, so they hand their constructors in).
 */
export interface ChannelEnds {
  sender(fd: number, capacity: number, mode: number): { close(): void };
  receiver(conns: Connection[], mode: number | undefined): { close(): void };
}

/**
 * Collects the fds of the endpoints in one value while it is encoded. The
 * fd of every endpoint the caller holds is duplicated at once: should the
 * caller close the endpoint before the message leaves, and its number be
 * reused, the message still carries the file the caller meant.
 */
export class Outgoing implements EndpointHooks {
  fds: number[] = [];
  clones: SenderEnd[] = [];
  moving: ReceiverEnd[] = [];
  #dups: number[] = [];

  #fd(fd: number, owned: boolean): number {
    if (this.fds.length >= MAX_FDS - 1) {
      throw new RangeError(
        `Cannot send on channel: the value holds more than ${MAX_FDS - 1} fds`,
      );
    }
    const sent = owned ? fd : dupCloexec(fd);
    if (!owned) this.#dups.push(sent);
    this.fds.push(sent);
    return this.fds.length - 1;
  }

  encode(value: object, out: Writer): boolean {
    const kind = kindOf(value);
    if (kind === undefined) return false;
    if (kind === "Sender") {
      this.#sender(value as SenderEnd, out);
      return true;
    }
    if (kind === "Receiver") {
      this.#receiver(value as ReceiverEnd, out);
      return true;
    }
    out.u8(KIND[kind]);
    out.varint(
      this.#fd(
        endpointFd(
          value as { rawFd: number },
          "Cannot send on channel",
          "an endpoint in the value",
        ),
        false,
      ),
    );
    return true;
  }

  /** A new sender of the channel travels; the original stays here. */
  #sender(sender: SenderEnd, out: Writer): void {
    const clone = sender.clone();
    this.clones.push(clone);
    out.u8(KIND.Sender);
    out.varint(this.#fd(clone.rawFd, true));
    out.varint(clone.capacity);
    out.u8(clone[senderMode]);
  }

  /** The receiver's connections travel, and what it holds of a batch. */
  #receiver(receiver: ReceiverEnd, out: Writer): void {
    const connections = receiver[beginMove]();
    this.moving.push(receiver);
    out.u8(KIND.Receiver);
    // Its mode travels with it (0 when it knows none), so that it keeps
    // refusing the other kind of frame wherever its connections came from.
    const mode = receiver[receiverMode];
    out.u8(mode === undefined ? 0 : mode + 1);
    out.varint(connections.length);
    for (const conn of connections) {
      out.varint(this.#fd(conn.fd.fd, false));
      out.varint(conn.capacity);
      out.varint(Math.min(conn.unacked, conn.capacity));
      // Messages of a batch that arrived here but were not taken go
      // along, ahead of what is still in the connection.
      const left = conn.batch === undefined ? 0 : conn.left ?? 0;
      out.varint(left);
      if (left > 0) {
        const rest = conn.batch!.subarray(conn.at);
        out.varint(rest.byteLength);
        out.ensure(rest.byteLength);
        out.buf.set(rest, out.pos);
        out.pos += rest.byteLength;
      }
    }
  }

  decode(): unknown {
    throw new Error("unreachable");
  }

  /** The message is out: local copies of sent clones and moved receivers go. */
  finish(transfer: readonly { close(): void }[] | undefined): void {
    closeAll(this.#dups);
    for (const clone of this.clones) clone.close();
    for (const receiver of this.moving) receiver[endMove](true);
    for (const endpoint of transfer ?? []) {
      try {
        const away = (endpoint as { [givenAway]?: () => void })[givenAway];
        if (away !== undefined) away.call(endpoint);
        else endpoint.close();
      } catch {
        // The message is out: a close that fails does not undo the send.
      }
    }
  }

  abandon(): void {
    closeAll(this.#dups);
    for (const clone of this.clones) clone.close();
    for (const receiver of this.moving) receiver[endMove](false);
  }
}

/** Rebuilds the endpoints of a received value from the fds that came. */
export class Incoming implements EndpointHooks {
  fds: number[];
  used: boolean[];
  made: { close(): void }[] = [];
  #ends: ChannelEnds;

  constructor(fds: number[], ends: ChannelEnds) {
    this.fds = fds;
    this.used = fds.map(() => false);
    this.#ends = ends;
  }

  /** The fd at `index`, checked to be a seqpacket socket, not yet taken. */
  #socket(index: number, what: string): number {
    if (index >= this.fds.length) {
      throw invalid(`endpoint names fd ${index} of ${this.fds.length}`);
    }
    const fd = this.fds[index];
    if (seqpacketProblem(fd) !== undefined) {
      throw notSeqpacket(
        `${what} (fd ${index} of the message, ${fd} here)`,
        fd,
      );
    }
    return fd;
  }

  #take(index: number): number {
    if (index >= this.fds.length) {
      throw invalid(`endpoint names fd ${index} of ${this.fds.length}`);
    }
    if (this.used[index]) throw invalid(`fd ${index} used twice`);
    this.used[index] = true;
    return this.fds[index];
  }

  encode(): boolean {
    return false;
  }

  decode(input: Reader): unknown {
    const kind = input.u8();
    // An fd is taken only once its endpoint is sure to be made: an fd not
    // taken is closed by fail().
    if (kind === KIND.Sender) return this.#sender(input);
    if (kind === KIND.Receiver) return this.#receiver(input);
    const expected = ONE_FD[kind];
    if (expected === undefined) throw invalid(`unknown endpoint kind ${kind}`);
    const fd = this.#take(input.varint());
    let endpoint: { close(): void };
    try {
      endpoint = adoptReceived(fd);
    } catch (error) {
      closeAll([fd]);
      throw invalid(`fd fits no endpoint: ${(error as Error).message}`);
    }
    this.made.push(endpoint);
    if (kindOf(endpoint) !== expected) {
      throw invalid(`fd is not the ${expected} the message says`);
    }
    return endpoint;
  }

  #sender(input: Reader): unknown {
    const index = input.varint();
    const capacity = input.varint();
    const mode = input.u8();
    if (capacity < 1 || capacity > MAX_CAPACITY || mode > MODE_BYTES) {
      throw invalid("bad sender");
    }
    this.#socket(index, "a Sender");
    const sender = this.#ends.sender(this.#take(index), capacity, mode);
    this.made.push(sender);
    return sender;
  }

  #receiver(input: Reader): unknown {
    const marked = input.u8();
    if (marked > MODE_BYTES + 1) throw invalid("bad receiver mode");
    const count = input.count();
    if (count > MAX_FDS) throw invalid("bad receiver");
    const conns: Connection[] = [];
    const seen = new Set<string>();
    try {
      for (let i = 0; i < count; i++) {
        const index = input.varint();
        const capacity = input.varint();
        const unacked = input.varint();
        const left = input.varint();
        if (capacity < 1 || capacity > MAX_CAPACITY || unacked > capacity) {
          throw invalid("bad receiver");
        }
        let batch: Uint8Array | undefined;
        if (left > 0) {
          const length = input.count();
          // What was left of one packet.
          if (length > INLINE_MAX) throw invalid("bad receiver batch");
          batch = input.bytes(length).slice();
          checkBatch(batch, 0, length, left);
        }
        const socket = this.#socket(index, "a Receiver's connection");
        const identity = socketIdentity(socket);
        if (seen.has(identity)) {
          throw invalid("a Receiver names one connection twice");
        }
        const problem = connectionProblem(socket, identity, seen);
        if (problem !== undefined) {
          throw invalid(`a Receiver's connection ${problem}`);
        }
        seen.add(identity);
        const fd = new OwnedFd(this.#take(index), "Receiver");
        conns.push({
          fd,
          capacity,
          unacked,
          identity,
          pushed: true,
          batch,
          at: 0,
          left: batch === undefined ? undefined : left,
          started: true,
        });
      }
    } catch (error) {
      for (const conn of conns) conn.fd.close();
      throw error;
    }
    if (!pushedRoom(conns.length)) {
      for (const conn of conns) conn.fd.close();
      throw invalid(
        `a Receiver's ${conns.length} connections would pass the ${pushedLimit()} that peers may make this thread's receivers hold (half the soft fd limit, ${MAX_PUSHED} at most)`,
      );
    }
    const receiver = this.#ends.receiver(
      conns,
      marked === 0 ? undefined : marked - 1,
    );
    this.made.push(receiver);
    return receiver;
  }

  /** Forgets the endpoints of the last message (for a reused instance). */
  reset(): this {
    this.made = [];
    return this;
  }

  /** Closes every fd not yet owned by an endpoint, and every endpoint. */
  fail(): void {
    for (const endpoint of this.made) endpoint.close();
    closeAll(this.fds.filter((_, i) => !this.used[i]));
  }
}
