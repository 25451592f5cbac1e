import { z } from 'zod';

export const FlowsQuery = z
  .object({
    last: z.coerce.number().int().min(1).max(1_000_000).optional().describe('Return the newest N flows'),
    follow: z
      .enum(['true', 'false', '1', '0'])
      .transform((v) => v === 'true' || v === '1')
      .optional()
      .describe('Keep the response open and stream new flows'),
  })
  .strict();
export type FlowsQuery = z.infer<typeof FlowsQuery>;
