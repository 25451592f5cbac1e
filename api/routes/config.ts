import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { ConfigReloadResult } from '../../common/schemas/config.js';

/**
 * POST /v1/config/reload: the agent re-reads its config file, as on SIGHUP, and answers with what
 * changed. An invalid file changes nothing and is a 422 (AGENT_ERR_CONFIG_INVALID) naming the bad
 * key. Admin scope on the TCP listener (every state-changing route not listed in routeAccess is).
 */
export const configRoutes: FastifyPluginAsyncZod<{ reload: () => ConfigReloadResult }> = async (app, { reload }) => {
  app.post(
    '/v1/config/reload',
    {
      schema: {
        summary: 'Re-read the config file (like SIGHUP); applies what can change live, names what needs a restart',
        response: { 200: ConfigReloadResult },
      },
    },
    async () => reload(),
  );
};
