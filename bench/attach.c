// What attaching an endpoint's two programs costs in the kernel, outside the agent: tcx links one
// after the other (what the agent does), the same two from two threads at once (does concurrency
// hide the wait?), and legacy tc (clsact qdisc + two cls_bpf filters) for comparison. A trivial
// program, fresh veth pairs named kb-at<pid>-<i><x>, deleted again (also on failure).
//
//   cc -O2 -o /tmp/kb-attach bench/attach.c -lbpf -lpthread && /tmp/kb-attach [rounds=20, at most 99]
//
// Each tcx BPF_LINK_CREATE swaps the device's bpf_mprog entry and waits for an RCU grace period
// (tcx_entry_sync() -> synchronize_rcu()) with RTNL held, so two links cost two grace periods, and
// threads do not overlap them. cls_bpf frees with call_rcu() instead and does not wait.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <net/if.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#ifndef BPF_TCX_INGRESS
#define BPF_TCX_INGRESS 46
#define BPF_TCX_EGRESS 47
#endif

static int prog_fd;

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

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 20;
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
  printf("attach, mean of %d rounds (ms):\n", rounds);
  printf("  tcx, one link                          %6.2f\n", one / rounds);
  printf("  tcx, ingress + egress one after other  %6.2f\n", seq / rounds);
  printf("  tcx, ingress + egress from 2 threads   %6.2f\n", par / rounds);
  printf("  tc clsact + 2 cls_bpf filters          %6.2f\n", tc / rounds);
  return 0;
}
