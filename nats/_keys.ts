/**
 * The keys of what NATS endpoints show only to this package's own modules:
 * symbols no entry point exports, on members the documentation leaves out.
 *
 * @module
 */

/** Resolves once a receiver's consumer is ready (JetStream). */
export const startReceiver: unique symbol = Symbol("NatsReceiver start");
