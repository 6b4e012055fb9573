// One card per station: latest values, address, "updated N s ago", stale mark. Text only via textContent.
import { $, cloneTemplate } from './dom.js';
import { duration, fixed1, fullTime, interval } from './format.js';
import { colorOf } from './palette.js';

const MIN_MS = 100;              // at high rates, cards are redrawn at most this often

export class Cards {
  constructor() {
    this.container = $('stations');
    this.views = new Map();      // station name -> the card's elements and stale flag
    this.dirty = new Set();      // stations whose values changed since the last draw
  }

  // JS owns the cards from here: the server-rendered ones are replaced, in the store's order.
  clear() { this.container.replaceChildren(); }

  add(st, at) {
    const root = cloneTemplate('card-template');
    const q = (selector) => root.querySelector(selector);
    root.dataset.station = st.name;
    q('.card-title').textContent = st.name;
    const view = {
      root, swatch: q('.swatch'), badge: q('.stale-badge'), address: q('.card-address'), spark: q('.spark'),
      values: ['temperature', 'pressure', 'humidity'].map((key) => [key, q(`.value[data-field="${key}"]`)]),
      updated: q('.updated'), every: q('.interval'), stale: null,
    };
    view.swatch.style.backgroundColor = colorOf(st.index);
    this.container.insertBefore(root, this.container.children[at] || null);
    this.views.set(st.name, view);
    this.dirty.add(st);
    $('stations-empty').hidden = true;
    const n = this.views.size;
    $('station-count').textContent = `${n} station${n === 1 ? '' : 's'}`;
  }

  sparkHost(st) { return this.views.get(st.name).spark; }

  touch(st) { this.dirty.add(st); }

  wait() { return this.dirty.size ? MIN_MS : Infinity; }

  draw() {
    for (const st of this.dirty) {
      const view = this.views.get(st.name), r = st.latest;
      if (!r) continue;
      view.address.textContent = st.address;
      for (const [key, el] of view.values) el.textContent = fixed1(r[key]);
    }
    this.dirty.clear();
  }

  // Once a second: how long ago each station reported, and whether that makes it stale.
  refreshAges(stations, now) {
    for (const st of stations) {
      const view = this.views.get(st.name);
      const since = st.sinceLastMs(now);
      view.updated.textContent = Number.isFinite(since) ? `updated ${duration(since)} ago` : 'no data';
      view.updated.title = fullTime(st.lastTsMs);
      view.every.textContent = Number.isFinite(st.medianMs) && st.knowsRhythm ? `every ${interval(st.medianMs)}` : '';
      const stale = Number.isFinite(since) && since > st.staleMs;
      if (stale !== view.stale) {
        view.stale = stale;
        view.root.classList.toggle('stale', stale);
      }
      if (stale) view.badge.title = `silent for ${duration(since)}; usually reports every ${interval(st.medianMs || 0)}`;
    }
  }

  recolor(stations) {
    for (const st of stations) this.views.get(st.name).swatch.style.backgroundColor = colorOf(st.index);
  }
}
