import { createRequire } from 'node:module';
import type { Logger } from 'pino';

interface UnixDgramSocket {
  send(buf: Buffer, offset: number, length: number, path: string, callback?: (err?: Error) => void): void;
  on(event: 'error', cb: (err: Error) => void): void;
  close(): void;
}

/**
 * sd_notify(3) for Type=notify services: READY, STATUS, WATCHDOG, RELOADING, STOPPING datagrams on
 * $NOTIFY_SOCKET. Node has no unix datagram sockets, so the well-kept `unix-dgram` addon sends them.
 * Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
 */
export class SystemdNotifier {
  private readonly path: string | undefined;
  private socket: UnixDgramSocket | undefined;
  private watchdog: NodeJS.Timeout | undefined;

  constructor(private readonly log: Logger, env: NodeJS.ProcessEnv = process.env) {
    const p = env.NOTIFY_SOCKET;
    // Abstract socket names are given with a leading '@'.
    this.path = p ? (p.startsWith('@') ? `\0${p.slice(1)}` : p) : undefined;
    this.watchdogUsec = Number(env.WATCHDOG_USEC ?? 0);
    const pid = Number(env.WATCHDOG_PID ?? process.pid);
    if (pid !== process.pid) this.watchdogUsec = 0;
  }

  private watchdogUsec: number;

  get enabled(): boolean {
    return this.path !== undefined;
  }

  notify(state: Record<string, string | number>): void {
    if (!this.path) return;
    if (!this.socket) {
      const require = createRequire(import.meta.url);
      const unixDgram = require('unix-dgram') as { createSocket(type: 'unix_dgram'): UnixDgramSocket };
      this.socket = unixDgram.createSocket('unix_dgram');
      this.socket.on('error', (err) => this.log.warn({ err }, 'sd_notify failed'));
    }
    const msg = Buffer.from(Object.entries(state).map(([k, v]) => `${k}=${v}`).join('\n'));
    this.socket.send(msg, 0, msg.length, this.path);
  }

  ready(status: string): void {
    this.notify({ READY: 1, STATUS: status, MAINPID: process.pid });
    // Pings come from the main loop: if it hangs, they stop and systemd restarts the service.
    if (this.watchdogUsec > 0 && !this.watchdog) {
      const everyMs = Math.max(100, Math.floor(this.watchdogUsec / 2000));
      this.watchdog = setInterval(() => this.notify({ WATCHDOG: 1 }), everyMs);
      this.watchdog.unref();
      this.log.info({ everyMs }, 'systemd watchdog enabled');
    }
  }

  status(text: string): void {
    this.notify({ STATUS: text });
  }

  /**
   * Long work before READY (restoring many workloads): moves the start job's deadline to `usec` from
   * now (EXTEND_TIMEOUT_USEC, systemd >= 236) and says why, so progress keeps TimeoutStartSec= from
   * killing a start that is merely long, while a start that stops making progress still times out.
   */
  startProgress(text: string, usec: number): void {
    this.notify({ STATUS: text, EXTEND_TIMEOUT_USEC: Math.floor(usec) });
  }

  reloading(): void {
    // MONOTONIC_USEC lets systemd (>= 253) match the reload; older versions ignore it.
    this.notify({ RELOADING: 1, MONOTONIC_USEC: Math.floor(Number(process.hrtime.bigint() / 1000n)) });
  }

  stopping(): void {
    this.notify({ STOPPING: 1 });
  }

  close(): void {
    if (this.watchdog) clearInterval(this.watchdog);
    this.socket?.close();
    this.socket = undefined;
  }
}
