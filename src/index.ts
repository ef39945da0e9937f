// The package's entry for programs that run marmot in their own process; everything else stays internal.

export { ConfigError, NatsError, SchemaError, ServerError } from "./errors.js";
export type { LogFields, Logger } from "./log.js";
export { startMarmot } from "./start-marmot.js";
export type { Marmot, MarmotOptions, MarmotStatus, Settings, SettingValue } from "./start-marmot.js";
