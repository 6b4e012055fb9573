/* sensorhub dashboard: takes over the server-rendered page and keeps it live from /events (SSE), or
 * /ws with ?transport=ws; the tabs of one dashboard share one stream (tabs.js).
 * ES modules, no build step. Every piece of data reaches the DOM through textContent only. */
import { Alerts } from './alerts.js';
import { Cards } from './cards.js';
import { Charts } from './charts.js';
import { $ } from './dom.js';
import { Frames } from './frames.js';
import { GapNotice } from './gap.js';
import { Health } from './health.js';
import { RateMeter, showLastReading } from './header.js';
import { fetchOlder, fetchPage } from './history.js';
import { darkScheme } from './palette.js';
import { showPill } from './pill.js';
import { Store } from './store.js';
import { Stream } from './stream.js';
import { Table } from './table.js';
import { TabShare } from './tabs.js';
import { WsTransport } from './transport_ws.js';

const cards = new Cards();
const store = new Store((st, at) => {
  cards.add(st, at);
  table.addOption(st.name);
  charts.addStation(st);
});
const table = new Table(store);
const charts = new Charts(store, cards, () => frames.schedule());
const frames = new Frames([table, cards, charts]);
const rate = new RateMeter();
const gaps = new GapNotice();
const alerts = new Alerts();
const health = new Health();
const useWs = new URLSearchParams(window.location.search).get('transport') === 'ws';

// arrival: when a live reading came in (null for the page's own): for the rate and the clock offset.
function accept(r, arrival) {
  const st = store.ingest(r, arrival);
  if (!st) return false;
  cards.touch(st);
  charts.touch(st);
  table.add(r);
  if (arrival != null) rate.count();
  return true;
}

function refreshAges(now) {
  cards.refreshAges(store.stations.values(), now);
  charts.touchAll(store.stations.values());
  showLastReading(store.lastTsMs);
}

// Once a second: ages, stale flags, header, and the sliding chart window.
function tick() {
  refreshAges(Date.now());
  rate.tick();
  frames.schedule();
}

function mergeOlder(older) {
  for (const st of store.mergeOlder(older)) {
    cards.touch(st);
    charts.touch(st);
  }
  table.refresh();
  charts.redrawNow();
  refreshAges(Date.now());
  frames.schedule();
}

// One stream per browser for this dashboard, user and transport, whichever tab holds it.
function shareStream(user) {
  const base = new URL('.', document.baseURI).pathname;
  new TabShare({
    name: `sensorhub-live ${base} ${String(user)} ${useWs ? 'ws' : 'sse'}`,
    lastId: () => store.lastId,
    accept: (r, arrival) => {
      const fresh = accept(r, arrival);
      if (fresh) frames.schedule();
      return fresh;
    },
    onState: (state, label) => {
      showPill(state, label);
      if (state === 'live') alerts.refresh(); // (re)connected: fetch the transitions missed meanwhile
    },
    onGap: (gap) => gaps.show(gap),
    openTransport: (lastId, handlers) => {
      const all = { ...handlers, onAlert: () => alerts.refresh() };
      return useWs ? new WsTransport(lastId, all) : new Stream(lastId, all);
    },
    fetchAfter: fetchPage,
  }).start();
}

function readInitial() {
  try {
    const data = JSON.parse($('initial-data').textContent || '{}');
    return data && typeof data === 'object' ? data : {};
  } catch {
    console.error('sensorhub: initial data is not valid JSON');
    return {};
  }
}

function start() {
  const init = readInitial();
  const readings = Array.isArray(init.readings) ? init.readings : [];
  cards.clear();
  store.addStations(readings.map((r) => r && r.station));
  for (const r of readings) accept(r, null);
  store.resumeFrom(init.last_id);
  table.rebuild();
  table.bind();
  charts.bind();
  darkScheme.addEventListener('change', () => {
    cards.recolor(store.stations.values());
    charts.recolor();
    frames.schedule();
  });
  if (!charts.enabled) console.error('sensorhub: uPlot did not load; charts are off');
  tick();
  setInterval(tick, 1000);
  shareStream(init.user);
  alerts.start();
  health.start();
  fetchOlder(readings)
    .then((older) => older && mergeOlder(older))
    .catch((err) => console.info('sensorhub: no history for the charts:', err.message));
}

start(); // a module runs once the document is parsed
