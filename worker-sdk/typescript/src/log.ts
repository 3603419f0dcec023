/** The SDK's logging: a small interface, so an application can pass its own logger. */
export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

const LEVELS = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 } as const;
export type LogLevel = keyof typeof LEVELS;

/** Lines on stderr at `level` and above ($BATON_LOG_LEVEL, default "info"). */
export function consoleLogger(prefix = "baton", level?: LogLevel): Logger {
  const env = process.env.BATON_LOG_LEVEL as LogLevel | undefined;
  const min = LEVELS[level ?? (env && env in LEVELS ? env : "info")];
  const line = (lvl: LogLevel, message: string): void => {
    if (LEVELS[lvl] >= min)
      process.stderr.write(`${new Date().toISOString()} ${lvl.toUpperCase()} ${prefix}: ${message}\n`);
  };
  return {
    debug: (m) => line("debug", m),
    info: (m) => line("info", m),
    warn: (m) => line("warn", m),
    error: (m) => line("error", m),
  };
}
