// Flow events from the BPF ring buffer, decoded in batches.
import { native } from '../common/native.js';
import type { NativeHandle } from '../common/native.js';
import { kcall } from './errors.js';
import { flowDecodeBatch, monotonicToWallOffsetNs } from './flow-decode.js';
import { METRIC_SLOTS } from './maps/metrics.js';
import type { MetricsMap } from './maps/metrics.js';
import type { FlowEvent, FlowReader } from './types.js';

/**
 * Opens a reader of the ring buffer `eventsFd`; `lost` counts what the datapath could not write.
 * `onClose` runs once, when the reader is closed.
 */
export function flowReaderOpen(eventsFd: number, metrics: MetricsMap, onEvents: (events: FlowEvent[]) => void, onClose: (reader: FlowReader) => void): FlowReader {
  const wallOffset = monotonicToWallOffsetNs();
  const handle: NativeHandle = kcall(() =>
    native().ringbufOpen(eventsFd, (batch) => {
      const events = flowDecodeBatch(batch, wallOffset);
      if (events.length) onEvents(events);
    }),
  );
  let open = true;
  const reader: FlowReader = {
    lostEvents: () => metrics.read(METRIC_SLOTS.EVENTS_LOST).packets,
    close: () => {
      if (!open) return;
      open = false;
      onClose(reader);
      native().ringbufClose(handle);
    },
  };
  return reader;
}
