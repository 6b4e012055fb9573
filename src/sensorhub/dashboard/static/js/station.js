// What the page knows about one station: its latest reading, its rhythm (when it counts as stale),
// its clock offset, its chart buffer and its recent readings.
import { newSeries } from './series.js';

const SAMPLES = 32;              // recent inter-arrival gaps (and clock offsets) kept per station
const STALE_FACTOR = 3;
const MIN_STALE_MS = 5000;
const UNKNOWN_STALE_MS = 60000;  // until a station has reported a few times

// The last SAMPLES values pushed, in no particular order.
class Samples {
  constructor() { this.buf = new Float64Array(SAMPLES); this.n = 0; this.pos = 0; }

  push(v) {
    this.buf[this.pos] = v;
    this.pos = (this.pos + 1) % SAMPLES;
    this.n = Math.min(this.n + 1, SAMPLES);
  }

  get full() { return this.n === SAMPLES; }
  median() { return Array.from(this.buf.subarray(0, this.n)).sort((a, b) => a - b)[this.n >> 1]; }
  min() {
    let min = Infinity;
    for (let i = 0; i < this.n; i++) if (this.buf[i] < min) min = this.buf[i];
    return min;
  }
}

export class Station {
  constructor(name, index) {
    this.name = name;
    this.index = index;          // order of first appearance: picks the colour
    this.address = '';
    this.latest = null;
    this.lastTsMs = -Infinity;
    this.gaps = new Samples();
    this.medianMs = NaN;
    this.staleMs = UNKNOWN_STALE_MS;
    // Station clock minus browser clock is estimated as the smallest (arrival - ts) seen live,
    // so a replay after a reconnect does not make a silent station look fresh.
    this.offsets = new Samples();
    this.offset = 0;
    this.series = newSeries();
    this.recent = [];            // last readings of this station, oldest first
  }

  // Three gaps are enough to know how often it reports.
  get knowsRhythm() { return this.gaps.n >= 3; }

  recordGap(gapMs) {
    this.gaps.push(gapMs);
    this.medianMs = this.gaps.median();
    this.staleMs = this.knowsRhythm ? Math.max(MIN_STALE_MS, STALE_FACTOR * this.medianMs) : UNKNOWN_STALE_MS;
  }

  recordOffset(ms) {
    this.offsets.push(ms);
    this.offset = this.offsets.min();
  }

  sinceLastMs(now) {
    if (!Number.isFinite(this.lastTsMs)) return NaN;
    return Math.max(0, now - (this.lastTsMs + this.offset));
  }
}
