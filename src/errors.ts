// Error classes that marmot raises on purpose: each says what is wrong, where, and what to do.

/** Bad configuration or flags: marmot cannot start. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/** The database or its schema cannot be used as it is (not SQLite, reserved names, ...). */
export class SchemaError extends Error {
  override name = "SchemaError";
}

/** A message on marmot's subjects that marmot cannot decode. */
export class DecodeError extends Error {
  override name = "DecodeError";
}

/** NATS is unreachable, refuses us, or is not what marmot needs. */
export class NatsError extends Error {
  override name = "NatsError";
}

/**
 * JetStream called a publish a duplicate of a message it does not hold: the message id is in its duplicate window,
 * but the stream has another message, or none, at the sequence it gave. The batch must go out again, under a new id.
 */
export class PhantomDuplicateError extends NatsError {
  override name = "PhantomDuplicateError";
}

/** The embedded nats-server could not start or stopped unexpectedly. */
export class ServerError extends Error {
  override name = "ServerError";
}
