// The Vagrant lab's layout and each host's kitnet config, from the environment, in one place: the
// Vagrantfile reads the layout (`plan`) and vagrant/provision/host.sh writes /etc/kitnet/config.yaml
// from `config HOST`, so the addresses the VMs get and the addresses kitnet announces cannot drift.
//   node dist/vagrant/lab-config.js plan            JSON: cluster, network, etcd node, hosts
//   node dist/vagrant/lab-config.js config host1    YAML: host1's /etc/kitnet/config.yaml
// Environment: KITNET_LAB_HOSTS (1-9, default 2), KITNET_LAB_NET (an IPv4 /24, default 10.77.0.0/24),
// KITNET_LAB_NET6 (an IPv6 /64, default fd77::/64), KITNET_LAB_CLUSTER (default kitnet-lab),
// KITNET_LAB_CLUSTER_ID (1-255, default 7).
import { pathToFileURL } from 'node:url';
import { stringify } from 'yaml';
import { z } from 'zod';
import { ConfigSchema } from '../agent/config.js';

/** The workload pools of the whole lab; every host's CIDRs are carved from them (cluster.ipam). */
export const LAB_POOLS = { ipv4Pool: '10.210.0.0/16', ipv6Pool: 'fd00:210::/64', ipv4MaskSize: 24, ipv6MaskSize: 112 } as const;
const ETCD_HOST_BYTE = 10;
const FIRST_HOST_BYTE = 11;

export interface LabNode {
  name: string;
  ipv4: string;
  ipv6: string;
}

export interface LabPlan {
  cluster: { name: string; id: number };
  network: { ipv4: string; ipv6: string };
  etcd: LabNode & { endpoint: string };
  hosts: LabNode[];
}

const EnvSchema = z.object({
  KITNET_LAB_HOSTS: z.string().regex(/^[1-9]$/, 'must be a number of hosts from 1 to 9').default('2'),
  KITNET_LAB_NET: z
    .string()
    .regex(/^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.0\/24$/, 'must be an IPv4 /24 such as 10.77.0.0/24')
    .refine((v) => v.split('/')[0]!.split('.').every((b) => Number(b) <= 255), 'must be an IPv4 /24 such as 10.77.0.0/24 (bytes 0-255)')
    .default('10.77.0.0/24'),
  KITNET_LAB_NET6: z
    .string()
    .regex(/^[0-9a-f]{1,4}(:[0-9a-f]{1,4}){0,3}::\/64$/i, 'must be an IPv6 /64 written as PREFIX::/64, such as fd77::/64')
    .default('fd77::/64'),
  KITNET_LAB_CLUSTER: z.string().regex(/^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$/, 'must be a cluster name: lower-case letters, digits and "-", at most 32').default('kitnet-lab'),
  KITNET_LAB_CLUSTER_ID: z.string().regex(/^\d{1,3}$/, 'must be a cluster id from 1 to 255').refine((v) => Number(v) >= 1 && Number(v) <= 255, 'must be a cluster id from 1 to 255').default('7'),
});

/** A bad variable, named, with what it must be. */
export class LabEnvError extends Error {}

/** The lab's layout: etcd at .10 (::10), host N at .(10+N) (::(10+N)) of the private network. */
export function labPlan(env: Record<string, string | undefined>): LabPlan {
  const parsed = EnvSchema.safeParse(Object.fromEntries(Object.keys(EnvSchema.shape).map((k) => [k, env[k] === '' ? undefined : env[k]])));
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const key = String(issue.path[0]);
    throw new LabEnvError(`${key}=${JSON.stringify(env[key])}: ${issue.message}`);
  }
  const e = parsed.data;
  const net4 = e.KITNET_LAB_NET.split('/')[0]!.split('.').slice(0, 3).join('.');
  const net6 = e.KITNET_LAB_NET6.replace(/::\/64$/, '').toLowerCase();
  const node = (name: string, byte: number): LabNode => ({ name, ipv4: `${net4}.${byte}`, ipv6: `${net6}::${byte}` });
  const etcd = node('etcd', ETCD_HOST_BYTE);
  return {
    cluster: { name: e.KITNET_LAB_CLUSTER, id: Number(e.KITNET_LAB_CLUSTER_ID) },
    network: { ipv4: e.KITNET_LAB_NET, ipv6: e.KITNET_LAB_NET6.toLowerCase() },
    etcd: { ...etcd, endpoint: `http://${etcd.ipv4}:2379` },
    hosts: Array.from({ length: Number(e.KITNET_LAB_HOSTS) }, (_, i) => node(`host${i + 1}`, FIRST_HOST_BYTE + i)),
  };
}

/**
 * HOST's /etc/kitnet/config.yaml: the lab's pools, cluster mode with the etcd node, and the host's
 * private-network addresses as its node addresses (the VM's first NIC is libvirt's management network,
 * which the automatic choice of nodeIP would take). Checked against the agent's own schema.
 */
export function hostConfig(plan: LabPlan, host: string): string {
  const h = plan.hosts.find((x) => x.name === host);
  if (!h) throw new LabEnvError(`no host "${host}" in the lab (hosts: ${plan.hosts.map((x) => x.name).join(', ')}; KITNET_LAB_HOSTS sets how many)`);
  const config = {
    nodeName: h.name,
    logLevel: 'info',
    ipam: { ipv4Pool: LAB_POOLS.ipv4Pool, ipv6Pool: LAB_POOLS.ipv6Pool },
    datapath: { mode: 'auto' },
    cluster: {
      name: plan.cluster.name,
      id: plan.cluster.id,
      nodeIP: h.ipv4,
      nodeIPv6: h.ipv6,
      ipam: { ipv4MaskSize: LAB_POOLS.ipv4MaskSize, ipv6MaskSize: LAB_POOLS.ipv6MaskSize },
      etcd: { endpoints: [plan.etcd.endpoint] },
    },
  };
  const checked = ConfigSchema.safeParse(config);
  if (!checked.success) throw new LabEnvError(`the generated config for ${host} does not validate: ${checked.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return `# Written by vagrant/provision/host.sh (vagrant/lab-config.ts) for the Vagrant lab.\n${stringify(config)}`;
}

function main(argv: string[]): number {
  const [cmd, host] = argv;
  try {
    const plan = labPlan(process.env);
    if (cmd === 'plan' && !host) {
      process.stdout.write(`${JSON.stringify(plan, null, 2)}\n`);
      return 0;
    }
    if (cmd === 'config' && host) {
      process.stdout.write(hostConfig(plan, host));
      return 0;
    }
    process.stderr.write('usage: lab-config.js plan | config HOST\n');
    return 2;
  } catch (err) {
    if (!(err instanceof LabEnvError)) throw err;
    process.stderr.write(`lab-config: ${err.message}\n`);
    return 2;
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) process.exitCode = main(process.argv.slice(2));
