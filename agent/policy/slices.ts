/**
 * Long policy work in slices. Compiling a policy that fits the maps can still mean a million entries
 * (seconds of work), and the agent's event loop must keep answering (/healthz within 1 s, issue #12
 * item 6). The compiler's loops are written once, as generators that yield every few thousand units of
 * work (`Steps`): `stepsRun` runs one to the end at once (tests, small incremental changes), and
 * `stepsRunSliced` returns to the event loop whenever a slice took longer than SLICE_MS.
 *
 * Yielding is safe only because every mutation of policy state runs under the agent's one mutex
 * (agent/mutex.ts): while an operation waits between slices, no other can change what it works on.
 */

/** A computation that yields (nothing) at points where it may be suspended. */
export type Steps<T> = Generator<void, T, void>;

/** Units of work (entries, map ops) between two yield points. */
export const STEP = 4096;

/** The longest the event loop is held between two returns to it (the last step may go past it). */
export const SLICE_MS = 20;

/** Runs to the end without returning to the event loop. */
export function stepsRun<T>(steps: Steps<T>): T {
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/** Runs to the end, returning to the event loop (setImmediate: I/O first) each time a slice passed SLICE_MS. */
export async function stepsRunSliced<T>(steps: Steps<T>): Promise<T> {
  let started = performance.now();
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
    if (performance.now() - started > SLICE_MS) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      started = performance.now();
    }
  }
}
