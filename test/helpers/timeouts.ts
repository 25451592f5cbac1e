/**
 * Test time limits scaled for the lab VM: under QEMU TCG every exec is 20-50x slower than on the host
 * (test/lab/README.md), so limits that are generous here are tight there.
 */
export function timeLimit(ms: number): number {
  return process.env.KITNET_LAB ? ms * 6 : ms;
}
