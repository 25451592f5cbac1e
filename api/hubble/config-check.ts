import { existsSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Config } from '../../agent/config.js';

/** The longest unix socket path (sun_path holds 108 bytes with the terminating NUL). */
const SOCKET_PATH_MAX = 107;

/**
 * The `hubble` keys' problems outside the schema, as [key, message] pairs for the config preflight
 * (the agent's start and `kitnet config check`).
 */
export function hubbleConfigProblems(config: Config): Array<[string, string]> {
  const h = config.hubble;
  if (!h.enabled) return [];
  const problems: Array<[string, string]> = [];
  const socket = resolve(hubbleSocketPath(config));
  if (Buffer.byteLength(socket) > SOCKET_PATH_MAX) problems.push(['hubble.socket', `${socket} is longer than the ${SOCKET_PATH_MAX} bytes a unix socket path may have`]);
  if (socket === resolve(config.api.socket)) problems.push(['hubble.socket', `${socket} is also api.socket: give the Hubble API its own socket`]);
  if (existsSync(socket) && statSync(socket).isDirectory()) problems.push(['hubble.socket', `${socket} is a directory`]);
  let dir = dirname(socket);
  while (!existsSync(dir)) dir = dirname(dir);
  if (!statSync(dir).isDirectory()) problems.push(['hubble.socket', `cannot create ${socket}: ${dir} is not a directory`]);
  return problems;
}

/** hubble.socket, or hubble.sock in the directory of api.socket (so an agent with its own API socket has its own). */
export function hubbleSocketPath(config: Config): string {
  return config.hubble.socket ?? resolve(dirname(config.api.socket), 'hubble.sock');
}
