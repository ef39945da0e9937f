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

/** The embedded nats-server could not start or stopped unexpectedly. */
export class ServerError extends Error {
  override name = "ServerError";
}
