import { z } from 'zod';

/** One config key (dotted path) whose value in the file differs from the running value. */
export const ConfigChange = z.object({
  key: z.string().describe('dotted key path, e.g. flows.aggregation'),
  from: z.unknown().describe('the running value (null: unset)'),
  to: z.unknown().describe('the value in the file (null: unset)'),
  applied: z.boolean().describe('true: in effect now; false: takes effect after a restart'),
});
export type ConfigChange = z.infer<typeof ConfigChange>;

export const ConfigReloadResult = z.object({
  file: z.string().nullable().describe('the config file read (null: defaults, environment and flags only)'),
  changed: z.array(ConfigChange),
  applied: z.array(z.string()).describe('keys now in effect'),
  restartNeeded: z.array(z.string()).describe('keys that take effect only after a restart'),
  tokens: z
    .object({ file: z.string(), count: z.number().int() })
    .nullable()
    .describe('the TCP listener\'s tokens file, read again on every reload (null: no TCP listener)'),
});
export type ConfigReloadResult = z.infer<typeof ConfigReloadResult>;
