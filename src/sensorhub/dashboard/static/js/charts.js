// One uPlot chart per quantity, a line per station, synced cursors; and the cards' sparklines.
import { chartData } from './chartdata.js';
import { $ } from './dom.js';
import { axisTime, clock, finite, fixed1 } from './format.js';
import { chartTheme, colorOf } from './palette.js';
import { fitWidth } from './resize.js';
import { QUANTITIES } from './series.js';
import { Sparks } from './sparks.js';
import { TimeWindow, WINDOWS } from './timewindow.js';

const HEIGHT = 220;
// Charts redraw about when the newest point moves a pixel, within these.
const MIN_MS = 100;
const MAX_MS = 1000;

export class Charts {
  // requestDraw: asks for a frame after a change that did not come with a reading.
  constructor(store, cards, requestDraw) {
    this.store = store;
    this.requestDraw = requestDraw;
    this.enabled = typeof uPlot === 'function';
    this.window = new TimeWindow(store);
    this.sparks = new Sparks(this.window, cards);
    this.plots = {};             // quantity -> uPlot
    this.visible = new Map();    // station name -> { quantity: shown in the legend }
    this.dirty = true;
    this.rebuild = true;         // a new station or colours: build the charts again
    this.now = false;            // draw at the next frame, whatever the interval
  }

  bind() {
    const selector = $('window-selector');
    const pressed = selector.querySelector('button[aria-pressed="true"]');
    this.setWindow(Number(pressed?.dataset.minutes) || 15);
    selector.addEventListener('click', (e) => {
      const b = e.target.closest('button[data-minutes]');
      if (b) this.setWindow(Number(b.dataset.minutes));
    });
  }

  addStation(st) {
    this.visible.set(st.name, { temperature: true, pressure: true, humidity: true });
    this.rebuild = true;
  }

  touch(st) {
    this.sparks.touch(st);
    this.dirty = true;
  }

  touchAll(stations) {
    for (const st of stations) this.sparks.touch(st);
    this.dirty = true;
  }

  redrawNow() {
    this.dirty = true;
    this.now = true;
  }

  recolor() {
    this.sparks.destroyAll();
    this.rebuild = true;
  }

  setWindow(minutes) {
    if (!WINDOWS.includes(minutes)) return;
    this.window.minutes = minutes;
    for (const b of $('window-selector').querySelectorAll('button')) {
      b.setAttribute('aria-pressed', String(Number(b.dataset.minutes) === minutes));
    }
    this.touchAll(this.store.stations.values());
    this.now = true;
    this.requestDraw();
  }

  wait() {
    if (!this.enabled) return Infinity;
    if (this.rebuild || this.now) return 0;
    return this.dirty ? this.interval() : Infinity;
  }

  interval() {
    const u = this.plots.temperature;
    const px = u ? u.bbox.width / uPlot.pxRatio : 0;
    const msPerPx = (this.window.minutes * 60000) / Math.max(200, px || 1000);
    return Math.min(MAX_MS, Math.max(MIN_MS, msPerPx));
  }

  draw() {
    if (this.rebuild) this.build();
    const [xMin, xMax] = this.window.range(Date.now());
    const data = chartData(this.store.ordered(), xMin, xMax);
    for (const q of QUANTITIES) this.plots[q.key].setData(data[q.key]);
    this.sparks.draw(xMin);
    this.dirty = false;
    this.now = false;
  }

  build() {
    const th = chartTheme();
    const stations = this.store.ordered();
    for (const q of QUANTITIES) {
      const container = $(`chart-${q.key}`);
      this.plots[q.key]?.destroy();
      container.replaceChildren();
      const opts = this.options(q, stations, th, Math.max(200, container.clientWidth));
      this.plots[q.key] = new uPlot(opts, [[], ...stations.map(() => [])], container);
      fitWidth(container, this.plots[q.key], HEIGHT);
    }
    for (const st of stations) this.sparks.ensure(st);
    this.rebuild = false;
  }

  options(q, stations, th, width) {
    const fmt = (v) => (finite(v) ? `${fixed1(v)} ${q.unit}` : '—');
    const axis = { stroke: th.axis, font: th.font, grid: { stroke: th.grid, width: 1 } };
    return {
      width,
      height: HEIGHT,
      cursor: { sync: { key: 'sensorhub', setSeries: true }, drag: { x: false, y: false }, points: { size: 7 } },
      legend: { live: true, markers: { width: 0, fill: (u, i) => u.series[i].stroke() } },
      scales: { x: { time: true, range: () => this.window.range(Date.now()) } },
      axes: [
        { ...axis, ticks: { stroke: th.grid, width: 1 }, space: 70,
          values: (u, splits, ai, space, incr) => splits.map((v) => axisTime(v * 1000, incr)) },
        { ...axis, ticks: { show: false }, size: 56,
          values: (u, vals, ai, space, incr) => vals.map((v) => v.toFixed(incr >= 1 ? 0 : incr >= 0.1 ? 1 : 2)) },
      ],
      series: [
        // With the cursor off the chart, the legend shows each station's latest value.
        { value: (u, v, si, idx) => (idx == null ? 'latest' : clock(v * 1000)) },
        ...stations.map((st) => ({
          label: st.name, stroke: colorOf(st.index), width: 1.75, spanGaps: false,
          show: this.visible.get(st.name)[q.key], points: { show: false },
          value: (u, v, si, idx) => fmt(idx == null ? st.latest?.[q.key] : v),
        })),
      ],
      hooks: {
        setSeries: [(u, idx, o) => {
          if (idx != null && o && typeof o.show === 'boolean') this.visible.get(stations[idx - 1].name)[q.key] = o.show;
        }],
      },
    };
  }
}
