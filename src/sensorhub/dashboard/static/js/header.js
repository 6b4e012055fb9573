// The top bar's figures: when the last reading was taken, and live readings per second.
import { $ } from './dom.js';
import { clock, fullTime } from './format.js';

export function showLastReading(ms) {
  const last = $('last-reading');
  last.textContent = clock(ms);
  last.title = fullTime(ms);
  if (Number.isFinite(ms)) last.dateTime = new Date(ms).toISOString();
}

// Live readings per second over the last (up to) ten ticks of a second.
export class RateMeter {
  constructor() {
    this.buckets = new Uint32Array(10);
    this.sec = 0;
    this.ticks = 0;
  }

  count() { this.buckets[this.sec]++; }

  tick() {
    let total = 0;
    for (const n of this.buckets) total += n;
    const rate = $('rate');
    rate.hidden = false;
    rate.textContent = `${(total / Math.max(1, this.ticks)).toFixed(1)}/s`;
    this.ticks = Math.min(this.ticks + 1, this.buckets.length);
    this.sec = (this.sec + 1) % this.buckets.length;
    this.buckets[this.sec] = 0;
  }
}
