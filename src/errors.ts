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

/**
 * A snapshot store cannot be used right now (unreachable, timed out, a server error): worth retrying. Says which
 * store and which object.
 */
export class SnapshotStoreError extends Error {
  override name = "SnapshotStoreError";
}

/**
 * A snapshot store refused marmot's credentials or the object's place does not exist: retrying cannot help. The
 * message names the config key to fix.
 */
export class SnapshotAccessError extends Error {
  override name = "SnapshotAccessError";
}

/** The object asked for is not in the store. */
export class SnapshotNotFoundError extends Error {
  override name = "SnapshotNotFoundError";
}

/** A snapshot object is truncated, corrupt, or made for another config: it is refused and nothing is changed. */
export class SnapshotInvalidError extends Error {
  override name = "SnapshotInvalidError";
}
