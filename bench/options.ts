// Command-line options of the benchmark scripts: `--name value`, with a fallback when the option is absent.

/** The value after `name` (e.g. "--rows"), or `fallback` when it is not given. */
export function textOption(name: string, fallback: string, argv: readonly string[] = process.argv): string {
  const at = argv.indexOf(name);
  return at >= 0 && argv[at + 1] !== undefined ? argv[at + 1]! : fallback;
}

/** A positive integer option; anything else given for it is an error that names the option. */
export function positiveIntegerOption(name: string, fallback: number, argv: readonly string[] = process.argv): number {
  const at = argv.indexOf(name);
  if (at < 0) return fallback;
  const value = Number(argv[at + 1]);
  if (!Number.isInteger(value) || value <= 0) throw new Error(`${name} needs a positive integer, got ${argv[at + 1]}`);
  return value;
}
