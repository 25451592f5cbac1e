import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, constants, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { request } from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { after, describe, test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { DEFAULT_CONFIG, unitRender } from '../../agent/install.js';
import { ApiClient } from '../../common/api-client.js';
import { run, status } from '../helpers/sys.js';
import { timeLimit } from '../helpers/timeouts.js';

/**
 * packaging/kitnet.service under a real systemd: `kitnet install`, then the start job, which must
 * finish only on READY=1 (Type=notify); `systemctl reload` (SIGHUP); a SIGKILL to the main process and
 * a hung main loop (SIGSTOP: the watchdog pings stop) both end in a restart; the agent's pino lines
 * are in the journal.
 *
 * PID 1 here is not systemd, so this runs in the lab VM booted with systemd as init:
 *   bash scripts/lab.sh 6.12 --init systemd -- node --test dist/test/root/systemd-service.test.js
 * (test/lab/suite.sh does that on 6.12). There KITNET_EXPECT_SYSTEMD=1 turns every reason to skip into
 * a failure. On a machine whose PID 1 is systemd it installs and starts the real kitnet.service, so it
 * runs there only inside the lab or with KITNET_SYSTEMD_TEST=1, and never over an installed unit.
 *
 * No timing thresholds: "active only after READY" is shown by holding the agent before READY (its
 * config file is a FIFO that the test feeds only after it has seen the unit activating with the
 * agent's process waiting on it); restarts and the watchdog are waited for with generous bounds and
 * then proven from systemd's own records (NRestarts, MainPID, the journal's UNIT_RESULT).
 */

const checkout = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const KITNET = join(checkout, 'bin/kitnet.js');
const UNIT_PATH = '/etc/systemd/system/kitnet.service';
const CONFIG_DIR = '/etc/kitnet';
const CONFIG = join(CONFIG_DIR, 'config.yaml');
const SOCKET = '/run/kitnet/kitnet.sock';
const PIN_ROOT = '/sys/fs/bpf/kitnet';
const STATE_DIR = '/var/lib/kitnet';
const DROP_IN = '/etc/systemd/system/kitnet.service.d/lab-tcg.conf';
const VM_NETNS = 'kitnet-vm-sd-v1';
const HOST_NETNS = 'kitnet-sd-host';

function pid1(): string {
  try {
    return readFileSync('/proc/1/comm', 'utf8').trim();
  } catch (err) {
    return `unknown (${(err as Error).message})`;
  }
}

const inLab = process.env.KITNET_LAB !== undefined;
const whyNot = ((): string | undefined => {
  if (pid1() !== 'systemd') {
    return `PID 1 is ${pid1()}, not systemd; run it in the lab VM with systemd as init: bash scripts/lab.sh 6.12 --init systemd -- node --test dist/test/root/systemd-service.test.js`;
  }
  if (process.getuid?.() !== 0) return 'needs root (kitnet install, systemctl)';
  if (!inLab && process.env.KITNET_SYSTEMD_TEST !== '1') {
    return "it installs and starts kitnet.service on this machine's systemd; it runs in the lab VM (--init systemd), or here with KITNET_SYSTEMD_TEST=1";
  }
  if (!inLab && existsSync(UNIT_PATH)) return `${UNIT_PATH} exists: kitnet is installed on this machine; not touching it`;
  return undefined;
})();
const mustRun = process.env.KITNET_EXPECT_SYSTEMD === '1';

type Props = Record<string, string>;
const PROPS = ['ActiveState', 'SubState', 'Result', 'MainPID', 'StatusText', 'NRestarts', 'WatchdogUSec', 'UnitFileState', 'Type', 'NotifyAccess'];

async function show(): Promise<Props> {
  const out = await run('systemctl', ['show', 'kitnet.service', '-p', PROPS.join(',')]);
  const props: Props = {};
  for (const line of out.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) props[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return props;
}

const brief = (p: Props) => `${p.ActiveState}/${p.SubState} result ${p.Result} pid ${p.MainPID} restarts ${p.NRestarts} status "${p.StatusText}"`;

/** GET /healthz on the agent's socket: the HTTP status, or the connection error's code. */
function healthz(): Promise<number | string> {
  return new Promise((done) => {
    const req = request({ socketPath: SOCKET, path: '/healthz', timeout: 10_000 }, (res) => {
      res.resume();
      res.on('end', () => done(res.statusCode ?? 0));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (err: NodeJS.ErrnoException) => done(err.code ?? err.message));
    req.end();
  });
}

interface JournalEntry {
  MESSAGE?: unknown;
  _PID?: string;
  _SYSTEMD_UNIT?: string;
  UNIT?: string;
  UNIT_RESULT?: string;
  EXIT_CODE?: string;
  EXIT_STATUS?: string;
  MESSAGE_ID?: string;
}

/** This boot's journal for kitnet.service: the agent's own lines and systemd's lines about the unit. */
async function journal(): Promise<JournalEntry[]> {
  const out = await run('journalctl', ['-b', '-u', 'kitnet.service', '-o', 'json', '--no-pager', '--output-fields=MESSAGE,_PID,_SYSTEMD_UNIT,UNIT,UNIT_RESULT,EXIT_CODE,EXIT_STATUS,MESSAGE_ID'], { timeoutMs: 60_000 });
  return out
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as JournalEntry);
}

const text = (m: unknown) => (typeof m === 'string' ? m : Array.isArray(m) ? Buffer.from(m as number[]).toString('utf8') : '');
/** The agent's pino lines (JSON on stdout, one per journal entry), parsed. */
const agentLines = (entries: JournalEntry[]) =>
  entries.flatMap((e) => {
    if (e._SYSTEMD_UNIT !== 'kitnet.service') return [];
    try {
      return [{ pid: Number(e._PID), line: JSON.parse(text(e.MESSAGE)) as { msg?: string; level?: number; everyMs?: number; socket?: string } }];
    } catch {
      return [];
    }
  });
/** systemd's "unit failed" records (MESSAGE_ID unit-failure-result) for kitnet.service. */
const failureResults = (entries: JournalEntry[]) => entries.filter((e) => e.MESSAGE_ID === 'd9b373ed55a64feb8242e02dbe79a49c' && e.UNIT === 'kitnet.service').map((e) => e.UNIT_RESULT);
/** systemd's "process exited" records (MESSAGE_ID unit-process-exit) for kitnet.service, except clean exits. */
const processExits = (entries: JournalEntry[]) =>
  entries
    .filter((e) => e.MESSAGE_ID === '98e322203f7a4ed290d09fe03c09fe15' && e.UNIT === 'kitnet.service')
    .map((e) => `${e.EXIT_CODE}/${e.EXIT_STATUS}`)
    .filter((x) => x !== 'exited/0');

/**
 * Polls fn every `everyMs` until it returns a value, for at most boundMs. Slow on purpose: in the TCG
 * VM every systemctl or journalctl costs a good part of a vCPU, which the agent starting needs.
 */
async function poll<T>(what: string, fn: () => Promise<T | undefined | false>, boundMs: number, everyMs = 2000): Promise<T> {
  const deadline = Date.now() + boundMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`gave up after ${boundMs / 1000} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * Waits (bounded) until systemd counts restart number `restarts` and a new main process runs; with
 * `active`, until that process has also said READY (the unit is active).
 */
async function restartedFrom(oldPid: number, restarts: number, what: string, boundMs: number, active: boolean): Promise<Props> {
  let last: Props = {};
  try {
    return await poll(
      what,
      async () => {
        last = await show();
        const started = Number(last.NRestarts) === restarts && Number(last.MainPID) > 0 && Number(last.MainPID) !== oldPid;
        return started && (!active || last.ActiveState === 'active') ? last : undefined;
      },
      boundMs,
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}; last state: ${brief(last)}`);
  }
}

describe('kitnet.service under systemd (lab VM, --init systemd)', { timeout: timeLimit(900_000), skip: !mustRun && whyNot }, () => {
  let groupExisted = true;
  let configDirExisted = true;
  let stateExisted = true;
  let stoppedPid = 0;
  let failed = false;
  /** A test that fails (instead of skipping) when KITNET_EXPECT_SYSTEMD=1 and systemd is not there. */
  const step = (name: string, fn: (t: TestContext) => Promise<void>) =>
    test(name, async (t) => {
      if (whyNot) assert.fail(`KITNET_EXPECT_SYSTEMD=1 but this test cannot run: ${whyNot}`);
      try {
        await fn(t);
      } catch (err) {
        failed = true;
        throw err;
      }
    });

  after(async () => {
    if (whyNot) return;
    if (failed) {
      // What an operator would look at first.
      const diag = async (cmd: string, args: string[]) => (await run(cmd, args, { timeoutMs: 60_000 }).catch((e: Error) => e.message)).trimEnd();
      console.log(`--- systemctl status kitnet\n${await diag('systemctl', ['status', 'kitnet', '--no-pager', '-l', '-n', '0'])}`);
      console.log(`--- journalctl -b -u kitnet (last 60)\n${await diag('journalctl', ['-b', '-u', 'kitnet', '--no-pager', '-n', '60'])}`);
    }
    if (stoppedPid) await status('kill', ['-CONT', String(stoppedPid)]);
    await status('systemctl', ['disable', '--now', 'kitnet.service'], 120_000);
    await status('systemctl', ['reset-failed', 'kitnet.service']);
    rmSync(UNIT_PATH, { force: true });
    rmSync(dirname(DROP_IN), { recursive: true, force: true });
    await status('systemctl', ['daemon-reload'], 120_000);
    if (!configDirExisted) rmSync(CONFIG_DIR, { recursive: true, force: true });
    if (!groupExisted) await status('groupdel', ['kitnet']);
    // The kind vm workload is removed by its test; should that have failed, its namespace and device go here.
    await status('ip', ['netns', 'del', VM_NETNS]);
    await status('ip', ['netns', 'del', HOST_NETNS]);
    for (const l of JSON.parse(await run('ip', ['-j', 'link', 'show']).catch(() => '[]')) as Array<{ ifname: string; ifalias?: string }>) {
      if (l.ifalias?.startsWith('kitnet:sd/')) await status('ip', ['link', 'del', l.ifname]);
    }
    if (!stateExisted) {
      // Nothing is attached any more: the pins are files on bpffs.
      rmSync(PIN_ROOT, { recursive: true, force: true });
      rmSync(STATE_DIR, { recursive: true, force: true });
      rmSync(dirname(SOCKET), { recursive: true, force: true });
    }
  });

  step('kitnet install: unit enabled, and the start job ends only on READY=1', async () => {
    if (inLab) {
      // The VM's /etc and /var are the host's, copy-on-write: whatever a kitnet run on the host left
      // there (a config, a store with workloads) is only a copy, and this test starts without it.
      rmSync(CONFIG_DIR, { recursive: true, force: true });
      rmSync(STATE_DIR, { recursive: true, force: true });
    }
    groupExisted = (await status('getent', ['group', 'kitnet'])) === 0;
    configDirExisted = existsSync(CONFIG_DIR);
    stateExisted = existsSync(STATE_DIR) || existsSync(PIN_ROOT);
    assert.ok(!existsSync(CONFIG), `${CONFIG} exists before the test`);
    // The agent reads its config first thing: a FIFO there holds it before READY, for as long as the
    // test needs to look, without any timing assumption.
    mkdirSync(CONFIG_DIR, { recursive: true });
    await run('mkfifo', ['-m', '0644', CONFIG]);
    if (inLab) {
      // Under QEMU TCG node runs 40-90x slower than on hardware: importing the agent alone takes
      // 40-120 s there, more than the unit's TimeoutStartSec=90s. The only change to the unit under test.
      mkdirSync(dirname(DROP_IN), { recursive: true });
      writeFileSync(DROP_IN, '[Service]\nTimeoutStartSec=15min\n');
    }
    const install = spawn(process.execPath, [KITNET, 'install'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let installOut = '';
    install.stdout.on('data', (c: Buffer) => (installOut += c.toString()));
    install.stderr.on('data', (c: Buffer) => (installOut += c.toString()));
    const installDone = new Promise<number | null>((done) => install.on('exit', (code) => done(code)));

    // The agent runs and has the config open, waiting: the unit must still be activating.
    let writer = -1;
    await poll(
      'the agent opening its config (FIFO)',
      async () => {
        if (install.exitCode !== null) throw new Error(`kitnet install exited with ${install.exitCode} before the agent read its config:\n${installOut}`);
        try {
          writer = openSync(CONFIG, constants.O_WRONLY | constants.O_NONBLOCK);
          return true;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENXIO') throw err; // ENXIO: no reader yet
          return false;
        }
      },
      timeLimit(60_000),
      500,
    );
    const held = await show();
    try {
      assert.equal(held.Type, 'notify');
      assert.equal(held.ActiveState, 'activating', `held before READY: ${brief(held)}`);
      assert.equal(held.SubState, 'start');
      assert.equal(held.StatusText, '', 'no STATUS before the agent sent one');
      assert.ok(Number(held.MainPID) > 0);
      assert.match(readFileSync(`/proc/${held.MainPID}/cmdline`, 'utf8').replaceAll('\0', ' '), /kitnet\.js agent -c \/etc\/kitnet\/config\.yaml/);
      assert.notEqual(await healthz(), 200, 'nothing answers before READY');
      assert.equal(install.exitCode, null, 'kitnet install (systemctl enable --now) still waits for the start job');
      // Release the agent: the default config through the FIFO, and a regular file for every later start.
      writeSync(writer, DEFAULT_CONFIG);
    } finally {
      closeSync(writer);
    }
    writeFileSync(`${CONFIG}.tmp`, DEFAULT_CONFIG, { mode: 0o644 });
    renameSync(`${CONFIG}.tmp`, CONFIG);

    const code = await installDone;
    assert.equal(code, 0, `kitnet install failed:\n${installOut}`);
    assert.match(installOut, /kitnet enabled and started/);
    // The start job is over: the agent said READY, so the unit is active and the API answers.
    const up = await show();
    assert.equal(up.ActiveState, 'active', brief(up));
    assert.equal(up.SubState, 'running');
    assert.equal(up.MainPID, held.MainPID, 'the process that was held is the one that became ready');
    assert.equal(up.StatusText, `serving 0 workloads on ${SOCKET}`);
    assert.equal(up.UnitFileState, 'enabled');
    assert.equal(up.NotifyAccess, 'main');
    assert.equal(up.WatchdogUSec, '30s');
    assert.equal(await healthz(), 200);
    assert.equal((await run('getent', ['group', 'kitnet'])).split(':')[0], 'kitnet');
    const unit = readFileSync(UNIT_PATH, 'utf8');
    assert.match(unit, new RegExp(`^ExecStart=${process.execPath} ${checkout}/bin/kitnet.js agent`, 'm'));
  });

  step('systemctl reload sends SIGHUP: the agent re-reads its config, same process, still active', async () => {
    const pid = Number((await show()).MainPID);
    await run('systemctl', ['reload', 'kitnet'], { timeoutMs: timeLimit(30_000) });
    await poll('"config reloaded" in the journal', async () => agentLines(await journal()).some((x) => x.pid === pid && x.line.msg === 'config reloaded'), timeLimit(30_000));
    const reloaded = await show();
    assert.equal(reloaded.ActiveState, 'active', brief(reloaded));
    assert.equal(Number(reloaded.MainPID), pid, 'a reload is not a restart');
  });

  step('SIGKILL to the main process: systemd restarts it (new MainPID, active again)', async () => {
    const before = await show();
    assert.equal(before.ActiveState, 'active', brief(before));
    const pid = Number(before.MainPID);
    process.kill(pid, 'SIGKILL');
    const after = await restartedFrom(pid, Number(before.NRestarts) + 1, 'a restart after SIGKILL', timeLimit(60_000), true);
    assert.equal(await healthz(), 200);
    assert.match(after.StatusText ?? '', /^serving \d+ workloads on /);
    const j = await poll('the journal recording the kill', async () => {
      const e = await journal();
      return failureResults(e).includes('signal') ? e : undefined;
    }, timeLimit(30_000));
    assert.deepEqual(failureResults(j), ['signal']);
    assert.deepEqual(processExits(j), ['killed/9']);
  });

  step('journalctl -u kitnet shows the agent log lines (JSON from stdout) of both processes', async () => {
    const current = Number((await show()).MainPID);
    const lines = await poll('the current agent\'s lines in the journal', async () => {
      const l = agentLines(await journal());
      return l.some((x) => x.pid === current && x.line.msg === 'systemd watchdog enabled') ? l : undefined;
    }, timeLimit(30_000));
    const starts = lines.filter((x) => x.line.msg === 'kitnet agent starting');
    assert.equal(new Set(starts.map((x) => x.pid)).size, 2, 'two agent processes started (install, after SIGKILL)');
    assert.ok(lines.some((x) => x.pid === current && x.line.msg === 'API listening' && x.line.socket === SOCKET && x.line.level === 30));
    // WATCHDOG_USEC reached both agents: they ping every half period.
    const watchdogs = lines.filter((x) => x.line.msg === 'systemd watchdog enabled');
    assert.equal(new Set(watchdogs.map((x) => x.pid)).size, 2);
    assert.ok(watchdogs.every((x) => x.line.everyMs === 15_000));
    // The text journalctl prints for an operator carries the same lines.
    assert.match(await run('journalctl', ['-b', '-u', 'kitnet', '--no-pager', '-o', 'cat'], { timeoutMs: 60_000 }), /"msg":"API listening"/);
  });

  step('netns workloads in namespaces made on the host: registered by the sandboxed agent, visible from the host', async () => {
    // The service's mount namespace receives the host's mounts, so `ip netns add` here reaches the agent.
    await run('ip', ['netns', 'add', HOST_NETNS]);
    const api = new ApiClient({ socket: SOCKET });
    await api.call('POST', '/v1/workloads', { name: 'w1', namespace: 'sd', labels: { app: 'w' }, netns: `/var/run/netns/${HOST_NETNS}` });
    try {
      assert.equal(await status('ip', ['-n', HOST_NETNS, 'link', 'show', 'eth0']), 0, 'the workload side, seen from the host');
    } finally {
      await api.call('DELETE', '/v1/workloads/sd/w1');
    }
  });

  // The unit's sandbox (ProtectSystem=, PrivateTmp=, ...) gives the service a mount namespace of its
  // own: a namespace the agent makes for a VM must still be bind-mounted where the host (the operator,
  // the hypervisor: `ip netns exec NS qemu ...`) sees it, so the agent makes it in PID 1's.
  step('kind vm: the namespace the sandboxed agent makes is usable from the host, and goes with the workload', async () => {
    const api = new ApiClient({ socket: SOCKET });
    const w = await api.call<{ vm?: { netnsPath: string; tap: string; netnsCreated: boolean } }>('POST', '/v1/workloads', { kind: 'vm', name: 'v1', namespace: 'sd', labels: { app: 'v' } });
    try {
      assert.equal(w.vm?.netnsPath, `/var/run/netns/${VM_NETNS}`);
      assert.equal(w.vm.netnsCreated, true);
      // Once per peer of the shared /run/netns mount: one line or more, each nsfs.
      const fstypes = await run('findmnt', ['-n', '-o', 'FSTYPE', `/run/netns/${VM_NETNS}`]).then((o) => o.trim().split('\n'), () => ['not a mount']);
      assert.ok(fstypes.every((t) => t === 'nsfs'), `bind-mounted in the host's mount namespace: ${fstypes.join(', ')}`);
      const rc = await status('ip', ['netns', 'exec', VM_NETNS, 'ip', 'link', 'show', w.vm.tap]);
      assert.equal(rc, 0, `ip netns exec ${VM_NETNS} on the host`);
    } finally {
      await api.call('DELETE', '/v1/workloads/sd/v1');
    }
    assert.ok(!existsSync(`/run/netns/${VM_NETNS}`), 'deleting the workload removed its namespace from the host');
  });

  step('a hung main loop (SIGSTOP) stops the watchdog pings: systemd kills the agent and starts a new one', async () => {
    const before = await show();
    assert.equal(before.ActiveState, 'active', brief(before));
    const pid = Number(before.MainPID);
    process.kill(pid, 'SIGSTOP');
    stoppedPid = pid;
    // WatchdogSec=30s: systemd notices within 30 s of the last ping, sends SIGABRT (and SIGCONT), and
    // schedules a restart. That the restarted agent becomes active again is shown by the SIGKILL case;
    // not waiting for it here saves one agent start (a minute or two under TCG).
    const after = await restartedFrom(pid, Number(before.NRestarts) + 1, 'a restart after the watchdog', timeLimit(120_000), false);
    stoppedPid = 0;
    assert.throws(() => process.kill(pid, 0), /ESRCH/, 'the hung process is gone');
    // Right after the fork it is still systemd's "(node)" setting up the sandbox, then it execs the agent.
    await poll('the new main process to exec the agent', async () => /kitnet\.js agent/.test(readFileSync(`/proc/${after.MainPID}/cmdline`, 'utf8').replaceAll('\0', ' ')), timeLimit(30_000), 200);
    const j = await poll('the journal recording the watchdog', async () => {
      const e = await journal();
      return failureResults(e).includes('watchdog') ? e : undefined;
    }, timeLimit(30_000));
    assert.deepEqual(failureResults(j), ['signal', 'watchdog'], 'one failure per provoked restart, nothing else');
    assert.match(processExits(j)[1] ?? '', /^(dumped|killed)\/6$/, 'ended by SIGABRT, the watchdog signal');
  });
});

describe('kitnet install: the unit sandbox still reaches the checkout and node', () => {
  const template = readFileSync(join(checkout, 'packaging/kitnet.service'), 'utf8');
  const render = (from: string, node: string) => {
    const log: string[] = [];
    return { unit: unitRender(template, from, node, (l) => log.push(l)), log };
  };

  test('a checkout in /opt: the unit as shipped', () => {
    const { unit, log } = render('/opt/kitnet', '/usr/bin/node');
    assert.match(unit, /^ExecStart=\/usr\/bin\/node \/opt\/kitnet\/bin\/kitnet\.js agent/m);
    assert.match(unit, /^ProtectHome=yes$/m);
    assert.match(unit, /^PrivateTmp=yes$/m);
    assert.doesNotMatch(unit, /BindReadOnlyPaths|@KITNET_ROOT@|@NODE@/);
    assert.deepEqual(log, []);
  });

  test('a checkout or node under a home directory: ProtectHome=read-only (yes hides /root and /home)', () => {
    for (const [from, node] of [['/root/kitnet', '/usr/bin/node'], ['/opt/kitnet', '/home/ops/.nvm/versions/node/v20.20.2/bin/node'], ['/run/user/0/kitnet', '/usr/bin/node']] as const) {
      const { unit, log } = render(from, node);
      assert.match(unit, /^ProtectHome=read-only$/m, from);
      assert.doesNotMatch(unit, /^ProtectHome=yes$/m);
      assert.match(log.join('\n'), /ProtectHome=read-only/);
    }
    assert.match(render('/homeless/kitnet', '/usr/bin/node').unit, /^ProtectHome=yes$/m, 'only the home directories themselves');
  });

  test('a checkout under /tmp (a CI clone): bound read-only into the private /tmp', () => {
    const { unit, log } = render('/tmp/ci/kitnet', '/usr/bin/node');
    assert.match(unit, /^PrivateTmp=yes$/m);
    assert.match(unit, /^BindReadOnlyPaths=\/tmp\/ci\/kitnet$/m);
    assert.match(log.join('\n'), /bound in read-only/);
  });
});
