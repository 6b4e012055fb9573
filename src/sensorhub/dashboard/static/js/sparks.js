// The temperature sparkline in each card: an axis-less uPlot over the charts' window.
import { lowerBound } from './order.js';
import { colorOf, fillOf } from './palette.js';
import { fitWidth } from './resize.js';

const HEIGHT = 44;

export class Sparks {
  constructor(timeWindow, cards) {
    this.window = timeWindow;
    this.cards = cards;
    this.plots = new Map();      // station name -> uPlot
    this.dirty = new Set();
  }

  touch(st) { this.dirty.add(st); }

  // Fit the sparkline to the data it has inside the window, so a young station still shows a trend.
  range(u) {
    const [xMin, xMax] = this.window.range(Date.now());
    const first = u.data[0][0];
    return [first != null && first > xMin ? Math.min(first, xMax - 30) : xMin, xMax];
  }

  ensure(st) {
    if (this.plots.has(st.name)) return;
    const container = this.cards.sparkHost(st);
    container.replaceChildren();
    const color = colorOf(st.index);
    const opts = {
      width: Math.max(100, container.clientWidth), height: HEIGHT,
      cursor: { show: false }, select: { show: false }, legend: { show: false },
      scales: { x: { time: true, range: (u) => this.range(u) } },
      axes: [{ show: false }, { show: false }],
      series: [{}, { stroke: color, fill: fillOf(color), width: 1.5, spanGaps: false, points: { show: false } }],
    };
    const u = new uPlot(opts, [[], []], container);
    this.plots.set(st.name, u);
    fitWidth(container, u, HEIGHT);
    this.dirty.add(st);
  }

  draw(xMin) {
    for (const st of this.dirty) {
      const u = this.plots.get(st.name);
      if (!u) continue;
      const s = st.series, i0 = lowerBound(s.xs, xMin);
      u.setData([s.xs.slice(i0), s.temperature.slice(i0)]);
      this.dirty.delete(st);
    }
  }

  // New colours: each sparkline is built again at the next draw.
  destroyAll() {
    for (const u of this.plots.values()) u.destroy();
    this.plots.clear();
  }
}
