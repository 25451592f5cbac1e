import { z } from 'zod';

export const Identity = z.object({
  id: z.number(),
  labels: z.array(z.string()),
  references: z.number().describe('Workloads on this host that use the identity'),
  reserved: z.boolean(),
  createdAt: z.string().nullable(),
});
export type Identity = z.infer<typeof Identity>;
