// The 5/15/60 min window the charts and sparklines show, ending now.
export const WINDOWS = [5, 15, 60];

export class TimeWindow {
  constructor(store) {
    this.store = store;
    this.minutes = 15;
  }

  // [xMin, xMax] in whole seconds.
  range(now) {
    let max = Math.ceil(now / 1000);
    // A station whose clock runs a little ahead should still be visible.
    const last = this.store.lastTsMs;
    if (Number.isFinite(last)) max = Math.max(max, Math.min(Math.ceil(last / 1000), max + 300));
    return [max - this.minutes * 60, max];
  }
}
