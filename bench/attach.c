// What attaching an endpoint's two programs costs in the kernel, outside the agent: tcx links one
// after the other (what the agent does), the same two from two threads at once (does concurrency
// hide the wait?), and legacy tc (clsact qdisc + two cls_bpf filters) for comparison. A trivial
// program, fresh veth pairs named kb-at<pid>-<i><x>, deleted again (also on failure).
//
//   cc -O2 -o /tmp/kb-attach bench/attach.c -lbpf -lpthread && /tmp/kb-attach [rounds=20, at most 99] [--expedited]
//
// --expedited measures everything again with /sys/kernel/rcu_expedited=1 (synchronize_rcu() forces an
// expedited grace period with IPIs to all CPUs instead of waiting for a normal one). That setting is
// HOST-WIDE: it is on only for the second measurement, and the old value is written back after it,
// on failure and on SIGINT/SIGTERM.
//
// Each tcx BPF_LINK_CREATE swaps the device's bpf_mprog entry and waits for an RCU grace period
// (tcx_entry_sync() -> synchronize_rcu()) with RTNL held, so two links cost two grace periods, and
// threads do not overlap them. cls_bpf frees with call_rcu() instead and does not wait.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <net/if.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#ifndef BPF_TCX_INGRESS
#define BPF_TCX_INGRESS 46
#define BPF_TCX_EGRESS 47
#endif

static int prog_fd;
static const char *RCU_EXPEDITED = "/sys/kernel/rcu_expedited";
static char rcu_old[8]; /* the value to put back; empty while nothing was changed */

static int rcu_write(const char *v) {
  FILE *f = fopen(RCU_EXPEDITED, "w");
  if (!f) return -1;
  int ok = fputs(v, f) >= 0;
  return (fclose(f) == 0 && ok) ? 0 : -1;
}

static void rcu_restore(void) {
  if (rcu_old[0] && rcu_write(rcu_old) == 0) rcu_old[0] = 0;
}

static void on_signal(int sig) {
  rcu_restore();
  signal(sig, SIG_DFL);
  raise(sig);
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

struct job {
  int ifindex;
  int type;
  int fd;
};

static void *link_create(void *arg) {
  struct job *j = arg;
  j->fd = bpf_link_create(prog_fd, j->ifindex, j->type, NULL);
  return NULL;
}

static int veth(const char *op, int round, char x) {
  char cmd[160];
  if (op[0] == 'a')
    snprintf(cmd, sizeof cmd, "ip link add kb-at%d-%d%c type veth peer name kb-at%d-%d%cp", getpid() % 10000, round, x, getpid() % 10000, round, x);
  else
    snprintf(cmd, sizeof cmd, "ip link del kb-at%d-%d%c 2>/dev/null", getpid() % 10000, round, x);
  return system(cmd);
}

static int ifindex_of(int round, char x) {
  char name[32];
  snprintf(name, sizeof name, "kb-at%d-%d%c", getpid() % 10000, round, x);
  return if_nametoindex(name);
}

static int measure(int rounds, const char *label) {
  double one = 0, seq = 0, par = 0, tc = 0;
  int failed = 0;
  for (int r = 0; r < rounds && !failed; r++) {
    if (veth("add", r, 'a') || veth("add", r, 'b') || veth("add", r, 'c')) {
      failed = 1;
      break;
    }
    // tcx, sequential: ingress then egress on device a
    struct job a = {ifindex_of(r, 'a'), BPF_TCX_INGRESS, -1}, b = {ifindex_of(r, 'a'), BPF_TCX_EGRESS, -1};
    double t = now_ms();
    link_create(&a);
    one += now_ms() - t;
    link_create(&b);
    seq += now_ms() - t;
    // tcx, both at once from two threads on device b
    struct job c = {ifindex_of(r, 'b'), BPF_TCX_INGRESS, -1}, d = {ifindex_of(r, 'b'), BPF_TCX_EGRESS, -1};
    pthread_t t1, t2;
    t = now_ms();
    pthread_create(&t1, NULL, link_create, &c);
    pthread_create(&t2, NULL, link_create, &d);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    par += now_ms() - t;
    // legacy tc on device c: clsact + one cls_bpf filter per direction
    int ifc = ifindex_of(r, 'c');
    t = now_ms();
    LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifc, .attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS);
    LIBBPF_OPTS(bpf_tc_hook, hin, .ifindex = ifc, .attach_point = BPF_TC_INGRESS);
    LIBBPF_OPTS(bpf_tc_hook, heg, .ifindex = ifc, .attach_point = BPF_TC_EGRESS);
    LIBBPF_OPTS(bpf_tc_opts, oin, .prog_fd = prog_fd);
    LIBBPF_OPTS(bpf_tc_opts, oeg, .prog_fd = prog_fd);
    int e = bpf_tc_hook_create(&hook);
    e |= bpf_tc_attach(&hin, &oin);
    e |= bpf_tc_attach(&heg, &oeg);
    tc += now_ms() - t;
    if (a.fd < 0 || b.fd < 0 || c.fd < 0 || d.fd < 0 || e) {
      fprintf(stderr, "attach failed in round %d\n", r);
      failed = 1;
    }
    if (a.fd >= 0) close(a.fd);
    if (b.fd >= 0) close(b.fd);
    if (c.fd >= 0) close(c.fd);
    if (d.fd >= 0) close(d.fd);
    veth("del", r, 'a');
    veth("del", r, 'b');
    veth("del", r, 'c');
  }
  if (failed) {
    for (int r = 0; r < rounds; r++) veth("del", r, 'a'), veth("del", r, 'b'), veth("del", r, 'c');
    return 1;
  }
  printf("attach, mean of %d rounds (ms), %s:\n", rounds, label);
  printf("  tcx, one link                          %6.2f\n", one / rounds);
  printf("  tcx, ingress + egress one after other  %6.2f\n", seq / rounds);
  printf("  tcx, ingress + egress from 2 threads   %6.2f\n", par / rounds);
  printf("  tc clsact + 2 cls_bpf filters          %6.2f\n", tc / rounds);
  return 0;
}

int main(int argc, char **argv) {
  int rounds = 20, expedited = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--expedited") == 0) expedited = 1;
    else rounds = atoi(argv[i]);
  }
  if (rounds < 1 || rounds > 99) rounds = 20; // device names stay within 15 characters
  // r0 = -1 (TC_NEXT for tcx; for cls_bpf direct-action an unknown verdict, treated as TC_ACT_UNSPEC)
  struct bpf_insn insns[] = {
    {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = -1},
    {.code = BPF_JMP | BPF_EXIT},
  };
  prog_fd = bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, "kb_attach", "GPL", insns, 2, NULL);
  if (prog_fd < 0) {
    perror("bpf_prog_load");
    return 1;
  }
  char cur[8] = "";
  FILE *f = fopen(RCU_EXPEDITED, "r");
  if (f) {
    if (!fgets(cur, sizeof cur, f)) cur[0] = 0;
    fclose(f);
  }
  cur[strcspn(cur, "\n")] = 0;
  char label[64];
  snprintf(label, sizeof label, "rcu_expedited=%s", cur[0] ? cur : "?");
  if (measure(rounds, label)) return 1;
  if (!expedited) return 0;
  if (strcmp(cur, "0") != 0) {
    fprintf(stderr, "--expedited: %s is \"%s\" already, nothing to compare\n", RCU_EXPEDITED, cur);
    return 0;
  }
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  snprintf(rcu_old, sizeof rcu_old, "%s", cur);
  if (rcu_write("1") != 0) {
    rcu_old[0] = 0;
    perror(RCU_EXPEDITED);
    return 1;
  }
  int rc = measure(rounds, "rcu_expedited=1 (host-wide, restored after)");
  rcu_restore();
  if (rcu_old[0]) fprintf(stderr, "could not restore %s to %s\n", RCU_EXPEDITED, rcu_old);
  return rc;
}
