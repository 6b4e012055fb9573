/* sensorhub dashboard: takes over the server-rendered page and keeps it live from /events (SSE).
 * Plain JS, no build step. Every piece of data reaches the DOM through textContent only. */
(() => {
  'use strict';

  const TABLE_CAP = 500;           // rows in the table, and readings kept to rebuild it
  const MAX_AGE_S = 3600;          // chart history kept per station
  const MAX_POINTS = 4000;         // hard cap on chart points per station
  const GAP_SAMPLES = 32;          // recent inter-arrival gaps kept per station
  const STALE_FACTOR = 3;
  const MIN_STALE_MS = 5000;
  const UNKNOWN_STALE_MS = 60000;  // until a station has reported a few times
  // All DOM work happens in requestAnimationFrame, and at high rates no more often than this:
  // a table re-laid out 60 times a second costs a lot of CPU and nobody can read it that fast.
  const CARD_MIN_MS = 100;
  const TABLE_MIN_MS = 250;
  const CHART_MIN_MS = 100;        // charts redraw about when the newest point moves a pixel, within these
  const CHART_MAX_MS = 1000;
  const RETRY_MAX_MS = 30000;
  const WINDOWS = [5, 15, 60];
  const HISTORY_BUDGET = 20000;    // older readings fetched at start to fill the charts
  const HISTORY_PAGE = 5000;
  const BUFFER_FIELDS = ['xs', 'temperature', 'pressure', 'humidity', 'n'];
  const QUANTITIES = [
    { key: 'temperature', unit: '°C' },
    { key: 'pressure', unit: 'hPa' },
    { key: 'humidity', unit: '%' },
  ];
  // One colour per station, kept for the session; lighter shades on a dark background.
  const PALETTE_LIGHT = ['#2563eb', '#dc2626', '#059669', '#d97706', '#7c3aed',
    '#db2777', '#0891b2', '#65a30d', '#ea580c', '#475569'];
  const PALETTE_DARK = ['#60a5fa', '#f87171', '#34d399', '#fbbf24', '#a78bfa',
    '#f472b6', '#22d3ee', '#a3e635', '#fb923c', '#94a3b8'];
  const darkScheme = window.matchMedia('(prefers-color-scheme: dark)');

  // ---------- small helpers ----------

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text != null) e.textContent = text;
    return e;
  }

  // Log ids are "<ms>-<seq>" with integers of any size: compare digit strings by length, then text.
  function cmpDigits(a, b) {
    if (a.length !== b.length) return a.length < b.length ? -1 : 1;
    return a < b ? -1 : a > b ? 1 : 0;
  }
  function parseId(id) {
    const m = typeof id === 'string' ? /^0*(\d+)-0*(\d+)$/.exec(id) : null;
    return m ? [m[1], m[2]] : null;
  }
  function isNewer(id, than) { // than: parsed id
    const p = parseId(id);
    if (!p) return false;
    const c = cmpDigits(p[0], than[0]);
    return c > 0 || (c === 0 && cmpDigits(p[1], than[1]) > 0);
  }

  // RFC 3339 with any number of fraction digits and any offset (Date.parse is not reliable past ms).
  const TS_RE = /^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:[Zz]|([+-])(\d\d):?(\d\d))$/;
  function parseTs(s) {
    const m = typeof s === 'string' ? TS_RE.exec(s) : null;
    if (!m) return typeof s === 'string' ? Date.parse(s) : NaN;
    const frac = m[7] ? Number((m[7] + '00').slice(0, 3)) : 0;
    let ms = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6], frac);
    if (m[8]) ms -= (m[8] === '+' ? 1 : -1) * (+m[9] * 60 + +m[10]) * 60000;
    return ms;
  }

  const fmtClock = new Intl.DateTimeFormat(undefined,
    { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' });
  const fmtHM = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
  const fmtDay = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
  const fmtFull = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

  const clock = (ms) => (Number.isFinite(ms) ? fmtClock.format(ms) : '—');
  const fullTime = (ms) => (Number.isFinite(ms) ? fmtFull.format(ms) : '');
  function tableTime(ms) {
    if (!Number.isFinite(ms)) return '—';
    const d = new Date(ms);
    return d.toDateString() === new Date().toDateString() ? clock(ms) : `${fmtDay.format(d)} ${clock(ms)}`;
  }
  function fixed1(v) {
    if (typeof v !== 'number' || !Number.isFinite(v)) return '—';
    const s = v.toFixed(1);
    return s === '-0.0' ? '0.0' : s;
  }
  function duration(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 120) return `${s} s`;
    if (s < 7200) return `${Math.floor(s / 60)} min`;
    if (s < 172800) return `${Math.floor(s / 3600)} h`;
    return `${Math.floor(s / 86400)} d`;
  }
  function interval(ms) {
    return ms < 10000 ? `${(ms / 1000).toFixed(ms < 1000 ? 2 : 1)} s` : duration(ms);
  }
  function lowerBound(arr, v) {
    let lo = 0, hi = arr.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (arr[mid] < v) lo = mid + 1; else hi = mid;
    }
    return lo;
  }
  const byName = (a, b) => (a < b ? -1 : a > b ? 1 : 0); // same code-point order as the template
  const finite = (v) => typeof v === 'number' && Number.isFinite(v);

  // ---------- state ----------

  const state = {
    highest: ['0', '0'],          // highest log id seen, parsed
    stations: new Map(),          // name -> station
    names: [],                    // sorted station names
    lastTsMs: NaN,
    windowMin: 15,
    filter: '',
    paused: false,
    pausedNew: 0,
    pauseLabelDirty: false,
    tableAll: [],                 // last TABLE_CAP readings, oldest first
    pendingRows: [],              // readings to prepend at the next frame
    rateBuckets: new Uint32Array(10), rateSec: 0, rateTicks: 0,
    chartsDirty: true, chartsRebuild: true, cardsDirty: true,
    lastChartDraw: -Infinity, lastTableDraw: -Infinity, lastCardDraw: -Infinity,
  };
  const charts = {};              // quantity -> uPlot
  const sized = new WeakMap();    // container -> { u, height }
  let resizer = null;

  function newStation(name) {
    const st = {
      name,
      address: '',
      colorIdx: state.stations.size,
      color: '',
      latest: null,
      lastTsMs: -Infinity,
      gaps: new Float64Array(GAP_SAMPLES), gapN: 0, gapPos: 0,
      medianMs: NaN, staleMs: UNKNOWN_STALE_MS,
      // Station clock minus browser clock is estimated as the smallest (arrival - ts) seen live,
      // so a replay after a reconnect does not make a silent station look fresh.
      offsets: new Float64Array(GAP_SAMPLES), offN: 0, offPos: 0, offset: 0,
      // Chart buffer, sorted by x (whole seconds); readings of the same second are averaged.
      // A point with n = 0 and null values is a gap marker.
      xs: [], temperature: [], pressure: [], humidity: [], n: [],
      recent: [],                 // last TABLE_CAP readings of this station, oldest first
      visible: { temperature: true, pressure: true, humidity: true },
      card: null, spark: null, cardDirty: true, sparkDirty: true, stale: null,
    };
    setColor(st);
    state.stations.set(name, st);
    const at = lowerBound(state.names, name);
    state.names.splice(at, 0, name);
    addCard(st, at);
    addFilterOption(name);
    state.chartsRebuild = true;
    return st;
  }

  function setColor(st) {
    const palette = darkScheme.matches ? PALETTE_DARK : PALETTE_LIGHT;
    const i = st.colorIdx;
    st.color = i < palette.length ? palette[i]
      : `hsl(${((i * 137.508) % 360).toFixed(0)}, ${darkScheme.matches ? '70%, 65%' : '62%, 45%'})`;
    if (st.card) st.card.swatch.style.backgroundColor = st.color;
  }

  // ---------- ingest ----------

  function ingest(r, arrival) {
    if (!r || typeof r !== 'object' || typeof r.station !== 'string') return false;
    if (!isNewer(r.log_id, state.highest)) return false; // replayed or already rendered
    state.highest = parseId(r.log_id);

    const tsMs = parseTs(r.ts);
    const st = state.stations.get(r.station) || newStation(r.station);
    if (typeof r.address === 'string') st.address = r.address;

    if (Number.isFinite(tsMs)) {
      addPoint(st, tsMs, r);
      if (tsMs > st.lastTsMs && Number.isFinite(st.lastTsMs)) recordGap(st, tsMs - st.lastTsMs);
      if (tsMs >= st.lastTsMs || !st.latest) { st.lastTsMs = tsMs; st.latest = r; }
      if (arrival != null) recordOffset(st, arrival - tsMs);
      if (!(tsMs <= state.lastTsMs)) state.lastTsMs = tsMs;
    } else if (!st.latest) {
      st.latest = r;
    }
    st.cardDirty = true;
    st.sparkDirty = true;
    state.cardsDirty = true;
    state.chartsDirty = true;

    pushCapped(state.tableAll, r);
    pushCapped(st.recent, r);
    if (state.paused) {
      if (!state.filter || state.filter === r.station) { state.pausedNew++; state.pauseLabelDirty = true; }
    } else if (!state.filter || state.filter === r.station) {
      state.pendingRows.push(r);
      if (state.pendingRows.length > 2 * TABLE_CAP) state.pendingRows.splice(0, state.pendingRows.length - TABLE_CAP);
    }
    if (arrival != null) state.rateBuckets[state.rateSec]++;
    return true;
  }

  function pushCapped(arr, item) {
    arr.push(item);
    if (arr.length > TABLE_CAP + 100) arr.splice(0, arr.length - TABLE_CAP); // amortised trim
  }

  function recordGap(st, gapMs) {
    st.gaps[st.gapPos] = gapMs;
    st.gapPos = (st.gapPos + 1) % GAP_SAMPLES;
    st.gapN = Math.min(st.gapN + 1, GAP_SAMPLES);
    const sorted = Array.from(st.gaps.subarray(0, st.gapN)).sort((a, b) => a - b);
    st.medianMs = sorted[sorted.length >> 1];
    st.staleMs = st.gapN >= 3 ? Math.max(MIN_STALE_MS, STALE_FACTOR * st.medianMs) : UNKNOWN_STALE_MS;
  }

  function recordOffset(st, ms) {
    st.offsets[st.offPos] = ms;
    st.offPos = (st.offPos + 1) % GAP_SAMPLES;
    st.offN = Math.min(st.offN + 1, GAP_SAMPLES);
    let min = Infinity;
    for (let i = 0; i < st.offN; i++) if (st.offsets[i] < min) min = st.offsets[i];
    st.offset = min;
  }

  function sinceLastMs(st, now) {
    if (!Number.isFinite(st.lastTsMs)) return NaN;
    return Math.max(0, now - (st.lastTsMs + st.offset));
  }

  function addPoint(st, tsMs, r) {
    const t = r.temperature, p = r.pressure, h = r.humidity;
    if (!finite(t) || !finite(p) || !finite(h)) return;
    const x = Math.floor(tsMs / 1000);
    const xs = st.xs, last = xs.length - 1;
    let i;
    if (last < 0 || x > xs[last]) {
      // Silence longer than the stale threshold becomes a visible gap (null) in the lines.
      if (last >= 0 && st.n[last] > 0 && (x - xs[last]) * 1000 > st.staleMs) insertAt(st, last + 1, xs[last] + 1, null, null, null, 0);
      insertAt(st, xs.length, x, t, p, h, 1);
    } else if (xs[i = lowerBound(xs, x)] === x) {
      const n = st.n[i];
      if (n === 0) { st.temperature[i] = t; st.pressure[i] = p; st.humidity[i] = h; st.n[i] = 1; return; }
      st.temperature[i] = (st.temperature[i] * n + t) / (n + 1);
      st.pressure[i] = (st.pressure[i] * n + p) / (n + 1);
      st.humidity[i] = (st.humidity[i] * n + h) / (n + 1);
      st.n[i] = n + 1;
      return;
    } else {
      insertAt(st, i, x, t, p, h, 1); // late reading, rare
    }
    trimPoints(st);
  }

  function trimPoints(st) {
    const xs = st.xs, newest = xs[xs.length - 1];
    if (xs.length > MAX_POINTS + 200 || xs[0] < newest - MAX_AGE_S - 60) { // amortised
      const cut = Math.max(xs.length - MAX_POINTS, lowerBound(xs, newest - MAX_AGE_S));
      for (const f of BUFFER_FIELDS) st[f].splice(0, cut);
    }
  }

  function insertAt(st, i, x, t, p, h, n) {
    if (i === st.xs.length) {
      st.xs.push(x); st.temperature.push(t); st.pressure.push(p); st.humidity.push(h); st.n.push(n);
    } else {
      st.xs.splice(i, 0, x); st.temperature.splice(i, 0, t); st.pressure.splice(i, 0, p);
      st.humidity.splice(i, 0, h); st.n.splice(i, 0, n);
    }
  }

  // ---------- station cards ----------

  function metric(cls, label, unit) {
    const box = el('div', `metric metric-${cls}`);
    box.append(el('span', 'metric-label', label));
    const v = el('span', 'metric-value');
    const value = el('span', 'value', '—');
    value.dataset.field = cls;
    v.append(value, el('span', 'unit', unit));
    box.append(v);
    return [box, value];
  }

  function addCard(st, at) {
    const card = el('article', 'card');
    card.dataset.station = st.name;
    const head = el('div', 'card-head');
    const swatch = el('span', 'swatch');
    swatch.setAttribute('aria-hidden', 'true');
    swatch.style.backgroundColor = st.color;
    const badge = el('span', 'badge stale-badge', 'stale');
    head.append(swatch, el('h3', 'card-title', st.name), badge);
    const address = el('p', 'card-address');
    const metrics = el('div', 'metrics');
    const [tBox, tVal] = metric('temperature', 'Temperature', '°C');
    const [pBox, pVal] = metric('pressure', 'Pressure', 'hPa');
    const [hBox, hVal] = metric('humidity', 'Humidity', '%');
    metrics.append(tBox, pBox, hBox);
    const spark = el('div', 'spark');
    spark.setAttribute('aria-hidden', 'true');
    const foot = el('p', 'card-foot');
    const updated = el('span', 'updated', 'no data');
    updated.dataset.field = 'updated';
    const every = el('span', 'interval');
    foot.append(updated, every);
    card.append(head, address, metrics, spark, foot);

    const container = $('stations');
    container.insertBefore(card, container.children[at] || null);
    st.card = { root: card, swatch, address, tVal, pVal, hVal, updated, every, badge, spark };
    $('stations-empty').hidden = true;
    const n = state.stations.size;
    $('station-count').textContent = `${n} station${n === 1 ? '' : 's'}`;
  }

  function renderCard(st) {
    const c = st.card, r = st.latest;
    if (!r) return;
    c.address.textContent = st.address;
    c.tVal.textContent = fixed1(r.temperature);
    c.pVal.textContent = fixed1(r.pressure);
    c.hVal.textContent = fixed1(r.humidity);
  }

  // Once a second: ages, stale flags, header, and the sliding chart window.
  function tick() {
    refreshAges(Date.now());

    // Live readings per second over the last (up to) ten ticks.
    let total = 0;
    for (const n of state.rateBuckets) total += n;
    const rate = $('rate');
    rate.hidden = false;
    rate.textContent = `${(total / Math.max(1, state.rateTicks)).toFixed(1)}/s`;
    state.rateTicks = Math.min(state.rateTicks + 1, state.rateBuckets.length);
    state.rateSec = (state.rateSec + 1) % state.rateBuckets.length;
    state.rateBuckets[state.rateSec] = 0;

    state.chartsDirty = true;
    schedule();
  }

  function refreshAges(now) {
    for (const st of state.stations.values()) {
      const since = sinceLastMs(st, now);
      const c = st.card;
      c.updated.textContent = Number.isFinite(since) ? `updated ${duration(since)} ago` : 'no data';
      c.updated.title = fullTime(st.lastTsMs);
      c.every.textContent = Number.isFinite(st.medianMs) && st.gapN >= 3 ? `every ${interval(st.medianMs)}` : '';
      const stale = Number.isFinite(since) && since > st.staleMs;
      if (stale !== st.stale) {
        st.stale = stale;
        c.root.classList.toggle('stale', stale);
      }
      if (stale) c.badge.title = `silent for ${duration(since)}; usually reports every ${interval(st.medianMs || 0)}`;
      st.sparkDirty = true;
    }
    const last = $('last-reading');
    last.textContent = clock(state.lastTsMs);
    last.title = fullTime(state.lastTsMs);
    if (Number.isFinite(state.lastTsMs)) last.dateTime = new Date(state.lastTsMs).toISOString();
  }

  // ---------- table ----------

  function makeRow(r) {
    const tr = el('tr');
    tr.dataset.logId = r.log_id;
    tr.dataset.station = r.station;
    const ms = parseTs(r.ts);
    const td = el('td', 'time');
    const time = el('time', null, tableTime(ms));
    if (typeof r.ts === 'string') time.dateTime = r.ts;
    time.title = fullTime(ms);
    td.append(time);
    tr.append(td, el('td', 'station', r.station), el('td', 'address', String(r.address ?? '')),
      el('td', 'num', fixed1(r.temperature)), el('td', 'num', fixed1(r.pressure)), el('td', 'num', fixed1(r.humidity)));
    return tr;
  }

  function rebuildTable() {
    const src = state.filter ? (state.stations.get(state.filter)?.recent ?? []) : state.tableAll;
    const frag = document.createDocumentFragment();
    for (let i = src.length - 1, k = 0; i >= 0 && k < TABLE_CAP; i--, k++) frag.append(makeRow(src[i]));
    const tbody = $('readings').tBodies[0];
    tbody.replaceChildren(frag);
    state.pendingRows = [];
    $('readings-empty').hidden = tbody.rows.length > 0;
  }

  function renderTable() {
    if (state.paused || !state.pendingRows.length) return;
    const rows = state.pendingRows.length > TABLE_CAP ? state.pendingRows.slice(-TABLE_CAP) : state.pendingRows;
    state.pendingRows = [];
    const frag = document.createDocumentFragment();
    for (let i = rows.length - 1; i >= 0; i--) frag.append(makeRow(rows[i]));
    const tbody = $('readings').tBodies[0];
    tbody.prepend(frag);
    for (let extra = tbody.rows.length - TABLE_CAP; extra > 0; extra--) tbody.lastElementChild.remove();
    $('readings-empty').hidden = true;
  }

  function addFilterOption(name) {
    const select = $('station-filter');
    const opts = Array.from(select.options).slice(1);
    if (opts.some((o) => o.value === name)) return;
    const next = opts.find((o) => byName(o.value, name) > 0) || null;
    const opt = el('option', null, name);
    opt.value = name;
    select.insertBefore(opt, next);
  }

  function setPaused(paused) {
    state.paused = paused;
    state.pausedNew = 0;
    const btn = $('pause');
    btn.setAttribute('aria-pressed', String(paused));
    btn.classList.toggle('is-paused', paused);
    $('readings').closest('.table-wrap').classList.toggle('paused', paused);
    renderPauseLabel();
    if (!paused) rebuildTable(); // shows everything buffered meanwhile, in order
  }

  function renderPauseLabel() {
    state.pauseLabelDirty = false;
    const btn = $('pause');
    btn.textContent = state.paused ? (state.pausedNew ? `Resume · ${state.pausedNew} new` : 'Resume') : 'Pause';
  }

  // ---------- charts ----------

  function theme() {
    const cs = getComputedStyle(document.documentElement);
    const v = (name, dflt) => cs.getPropertyValue(name).trim() || dflt;
    return { axis: v('--chart-axis', '#64748b'), grid: v('--chart-grid', '#e2e8f0'), font: '12px system-ui, sans-serif' };
  }

  function windowRange(now) {
    let max = Math.ceil(now / 1000);
    // A station whose clock runs a little ahead should still be visible.
    if (Number.isFinite(state.lastTsMs)) max = Math.max(max, Math.min(Math.ceil(state.lastTsMs / 1000), max + 300));
    return [max - state.windowMin * 60, max];
  }

  function sparkRange(u) {
    const [xMin, xMax] = windowRange(Date.now());
    const first = u.data[0][0];
    return [first != null && first > xMin ? Math.min(first, xMax - 30) : xMin, xMax];
  }

  function axisTime(ms, incrS) {
    return incrS < 60 ? clock(ms) : fmtHM.format(ms);
  }

  function fill(color) {
    return color.startsWith('#') ? `${color}22` : color.replace('hsl(', 'hsla(').replace(')', ', 0.13)');
  }

  function observe(container, u, height) {
    sized.set(container, { u, height });
    resizer.observe(container);
  }

  function buildCharts() {
    const th = theme();
    const stations = state.names.map((n) => state.stations.get(n));
    for (const q of QUANTITIES) {
      const container = $(`chart-${q.key}`);
      if (charts[q.key]) charts[q.key].destroy();
      container.replaceChildren();
      const fmt = (v) => (finite(v) ? `${fixed1(v)} ${q.unit}` : '—');
      const opts = {
        width: Math.max(200, container.clientWidth),
        height: 220,
        cursor: { sync: { key: 'sensorhub', setSeries: true }, drag: { x: false, y: false }, points: { size: 7 } },
        legend: { live: true, markers: { width: 0, fill: (u, i) => u.series[i].stroke() } },
        scales: { x: { time: true, range: () => windowRange(Date.now()) } },
        axes: [
          { stroke: th.axis, font: th.font, grid: { stroke: th.grid, width: 1 }, ticks: { stroke: th.grid, width: 1 },
            space: 70, values: (u, splits, ai, space, incr) => splits.map((v) => axisTime(v * 1000, incr)) },
          { stroke: th.axis, font: th.font, grid: { stroke: th.grid, width: 1 }, ticks: { show: false }, size: 56,
            values: (u, vals, ai, space, incr) => vals.map((v) => v.toFixed(incr >= 1 ? 0 : incr >= 0.1 ? 1 : 2)) },
        ],
        series: [
          // With the cursor off the chart, the legend shows each station's latest value.
          { value: (u, v, si, idx) => (idx == null ? 'latest' : clock(v * 1000)) },
          ...stations.map((st) => ({
            label: st.name, stroke: st.color, width: 1.75, spanGaps: false,
            show: st.visible[q.key], points: { show: false },
            value: (u, v, si, idx) => fmt(idx == null ? st.latest?.[q.key] : v),
          })),
        ],
        hooks: {
          setSeries: [(u, idx, o) => {
            if (idx != null && o && typeof o.show === 'boolean') stations[idx - 1].visible[q.key] = o.show;
          }],
        },
      };
      charts[q.key] = new uPlot(opts, emptyData(stations.length), container);
      observe(container, charts[q.key], 220);
    }
    for (const st of stations) if (!st.spark) buildSpark(st);
    state.chartsRebuild = false;
  }

  function emptyData(series) {
    return [[], ...Array.from({ length: series }, () => [])];
  }

  function buildSpark(st) {
    const container = st.card.spark;
    container.replaceChildren();
    const opts = {
      width: Math.max(100, container.clientWidth), height: 44,
      cursor: { show: false }, select: { show: false }, legend: { show: false },
      // Fit the sparkline to the data it has inside the window, so a young station still shows a trend.
      scales: { x: { time: true, range: (u) => sparkRange(u) } },
      axes: [{ show: false }, { show: false }],
      series: [{}, { stroke: st.color, fill: fill(st.color), width: 1.5, spanGaps: false, points: { show: false } }],
    };
    st.spark = new uPlot(opts, emptyData(1), container);
    observe(container, st.spark, 44);
    st.sparkDirty = true;
  }

  // Align every station on one x axis: undefined where a station has no point (spanned), null = gap.
  function chartData(xMin, xMax) {
    const span = xMax - xMin + 1;
    const present = new Uint8Array(span);
    const stations = state.names.map((n) => state.stations.get(n));
    const starts = stations.map((st) => {
      const i0 = lowerBound(st.xs, xMin);
      for (let i = i0; i < st.xs.length && st.xs[i] <= xMax; i++) present[st.xs[i] - xMin] = 1;
      return i0;
    });
    const xs = [];
    const pos = new Int32Array(span);
    for (let k = 0; k < span; k++) if (present[k]) { pos[k] = xs.length; xs.push(xMin + k); }
    const out = {};
    for (const q of QUANTITIES) out[q.key] = [xs];
    stations.forEach((st, si) => {
      for (const q of QUANTITIES) {
        const ys = new Array(xs.length).fill(undefined);
        const src = st[q.key];
        let gapFrom = -1;
        for (let i = starts[si]; i < st.xs.length && st.xs[i] <= xMax; i++) {
          const p = pos[st.xs[i] - xMin];
          if (st.n[i] === 0) {
            if (gapFrom < 0) gapFrom = p;
          } else {
            // uPlot only breaks the line over the null run itself: widen it to this station's next point.
            if (gapFrom >= 0) { ys.fill(null, gapFrom, p); gapFrom = -1; }
            ys[p] = src[i];
          }
        }
        out[q.key].push(ys);
      }
    });
    return out;
  }

  function drawCharts(now) {
    if (state.chartsRebuild) buildCharts();
    const [xMin, xMax] = windowRange(now);
    const data = chartData(xMin, xMax);
    for (const q of QUANTITIES) charts[q.key].setData(data[q.key]);
    for (const st of state.stations.values()) {
      if (!st.sparkDirty || !st.spark) continue;
      const i0 = lowerBound(st.xs, xMin);
      st.spark.setData([st.xs.slice(i0), st.temperature.slice(i0)]);
      st.sparkDirty = false;
    }
  }

  function setWindow(minutes) {
    if (!WINDOWS.includes(minutes)) return;
    state.windowMin = minutes;
    for (const b of $('window-selector').querySelectorAll('button')) {
      b.setAttribute('aria-pressed', String(Number(b.dataset.minutes) === minutes));
    }
    for (const st of state.stations.values()) st.sparkDirty = true;
    state.chartsDirty = true;
    state.lastChartDraw = -Infinity;
    schedule();
  }

  // ---------- frame batching ----------

  // Each kind of update has its own minimum interval; between frames a timer (not a busy
  // requestAnimationFrame loop) waits for the earliest one that is due.
  let frameQueued = false;
  let chartsEnabled = true;
  let timer = 0;
  let timerAt = Infinity;

  function dueIn(now) {
    let d = Infinity;
    if (state.pendingRows.length || state.pauseLabelDirty) d = state.lastTableDraw + TABLE_MIN_MS - now;
    if (state.cardsDirty) d = Math.min(d, state.lastCardDraw + CARD_MIN_MS - now);
    if (chartsEnabled && state.chartsRebuild) d = 0;
    else if (chartsEnabled && state.chartsDirty) d = Math.min(d, state.lastChartDraw + chartInterval() - now);
    return d;
  }

  function schedule() {
    if (frameQueued) return;
    const now = performance.now();
    const d = dueIn(now);
    if (d === Infinity) return;
    if (d <= 0) {
      clearTimeout(timer);
      timer = 0;
      timerAt = Infinity;
      frameQueued = true;
      requestAnimationFrame(frame);
    } else if (now + d < timerAt) {
      clearTimeout(timer);
      timerAt = now + d;
      timer = setTimeout(() => { timer = 0; timerAt = Infinity; schedule(); }, d);
    }
  }

  function frame(now) {
    frameQueued = false;
    if ((state.pendingRows.length || state.pauseLabelDirty) && now - state.lastTableDraw >= TABLE_MIN_MS) {
      renderTable();
      if (state.pauseLabelDirty) renderPauseLabel();
      state.lastTableDraw = now;
    }
    if (state.cardsDirty && now - state.lastCardDraw >= CARD_MIN_MS) {
      for (const st of state.stations.values()) {
        if (st.cardDirty) { renderCard(st); st.cardDirty = false; }
      }
      state.cardsDirty = false;
      state.lastCardDraw = now;
    }
    if (chartsEnabled && (state.chartsRebuild || (state.chartsDirty && now - state.lastChartDraw >= chartInterval()))) {
      drawCharts(Date.now());
      state.chartsDirty = false;
      state.lastChartDraw = now;
    }
    schedule();
  }

  function chartInterval() {
    const u = charts.temperature;
    const px = u ? u.bbox.width / uPlot.pxRatio : 0;
    const msPerPx = (state.windowMin * 60000) / Math.max(200, px || 1000);
    return Math.min(CHART_MAX_MS, Math.max(CHART_MIN_MS, msPerPx));
  }

  // ---------- connection ----------

  let source;                      // undefined before the first connect, null while waiting to retry
  let retryTimer = 0;
  let retryDelay = 1000;

  function setConnection(s, label) {
    const pill = $('connection');
    pill.dataset.state = s;
    pill.querySelector('.pill-label').textContent = label || s;
  }

  function eventsUrl() {
    const url = new URL('events', document.baseURI);
    url.searchParams.set('last_id', state.highest.join('-'));
    return url.href;
  }

  function connect() {
    clearTimeout(retryTimer);
    const es = new EventSource(eventsUrl());
    const first = source === undefined;
    source = es;
    // After a give-up the pill stays "offline" until a new stream actually opens.
    if (first) setConnection(navigator.onLine === false ? 'offline' : 'reconnecting', 'connecting');
    es.addEventListener('open', () => {
      retryDelay = 1000;
      setConnection('live');
    });
    es.addEventListener('error', () => {
      if (es !== source) return;
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up (e.g. an answer that is not SSE): start over from the highest id we hold.
        source = null;
        setConnection('offline');
        retryTimer = setTimeout(connect, retryDelay);
        retryDelay = Math.min(retryDelay * 2, RETRY_MAX_MS);
      } else {
        // EventSource retries by itself and sends Last-Event-ID.
        setConnection(navigator.onLine === false ? 'offline' : 'reconnecting');
      }
    });
    es.addEventListener('reading', onReading);
  }

  function onReading(ev) {
    let r;
    try { r = JSON.parse(ev.data); } catch {
      console.warn('sensorhub: ignoring an event that is not JSON');
      return;
    }
    if (r && typeof r === 'object' && typeof r.log_id !== 'string' && ev.lastEventId) r.log_id = ev.lastEventId;
    if (ingest(r, Date.now())) schedule();
  }

  window.addEventListener('offline', () => setConnection('offline'));
  window.addEventListener('online', () => {
    if (!source) connect();
    else if (source.readyState === EventSource.OPEN) setConnection('live');
    else setConnection('reconnecting');
  });

  // ---------- history ----------

  // The page carries only the newest readings. Fill the charts from the API with what came before
  // them (strictly older than the first one, so nothing is counted twice); this also brings back
  // stations that went quiet a while ago, which then show as stale.
  async function loadHistory(readings) {
    if (readings.length < 500) return; // the page already holds the whole log
    const first = parseId(readings[0].log_id), last = parseId(readings[readings.length - 1].log_id);
    if (!first || !last) return;
    const firstMs = Number(first[0]);
    const spanMs = Math.max(1, Number(last[0]) - firstMs);
    const wantMs = Math.min(MAX_AGE_S * 1000, (HISTORY_BUDGET * spanMs) / readings.length);
    let after = `${Math.max(0, Math.floor(firstMs - wantMs))}-0`;
    const older = [];
    while (older.length < HISTORY_BUDGET) {
      const url = new URL('api/readings', document.baseURI);
      url.searchParams.set('after', after);
      url.searchParams.set('limit', String(HISTORY_PAGE));
      const res = await fetch(url, { cache: 'no-store' });
      if (!res.ok) throw new Error(`GET api/readings answered ${res.status}`);
      const body = await res.json();
      const page = Array.isArray(body.readings) ? body.readings : [];
      let done = page.length < HISTORY_PAGE || typeof body.last_id !== 'string';
      for (const r of page) {
        const id = r && parseId(r.log_id);
        if (!id) continue;
        if (!isNewer(readings[0].log_id, id)) { done = true; break; } // reached the page's readings
        older.push(r);
      }
      if (done) break;
      after = body.last_id;
    }
    mergeHistory(older);
  }

  function mergeHistory(older) {
    const byStation = new Map();
    for (const r of older) {
      if (!r || typeof r.station !== 'string') continue;
      if (!byStation.has(r.station)) byStation.set(r.station, []);
      byStation.get(r.station).push(r);
    }
    for (const [name, list] of byStation) {
      const st = state.stations.get(name) || newStation(name);
      const tmp = { xs: [], temperature: [], pressure: [], humidity: [], n: [], staleMs: st.staleMs };
      let prevTs = NaN, newest = null;
      for (const r of list) {
        const ts = parseTs(r.ts);
        if (!Number.isFinite(ts)) continue;
        if (ts > prevTs && st.gapN < GAP_SAMPLES) recordGap(st, ts - prevTs);
        prevTs = ts;
        newest = r;
        tmp.staleMs = st.staleMs;
        addPoint(tmp, ts, r);
      }
      prependPoints(st, tmp);
      if (!st.latest && newest) {
        st.latest = newest;
        st.lastTsMs = parseTs(newest.ts);
        if (typeof newest.address === 'string') st.address = newest.address;
        if (!(st.lastTsMs <= state.lastTsMs)) state.lastTsMs = st.lastTsMs;
      }
      const room = TABLE_CAP - st.recent.length;
      if (room > 0) st.recent = list.slice(-room).concat(st.recent);
      st.cardDirty = true;
      st.sparkDirty = true;
    }
    if (state.filter && !state.paused) rebuildTable();
    state.cardsDirty = true;
    state.chartsDirty = true;
    state.lastChartDraw = -Infinity;
    refreshAges(Date.now());
    schedule();
  }

  function prependPoints(st, tmp) {
    const firstX = st.xs.length ? st.xs[0] : Infinity;
    const k = lowerBound(tmp.xs, firstX); // only seconds before the ones we already have
    if (!k) return;
    const head = {};
    for (const f of BUFFER_FIELDS) head[f] = tmp[f].slice(0, k);
    const lastX = head.xs[k - 1];
    if (firstX !== Infinity && (firstX - lastX) * 1000 > st.staleMs && lastX + 1 < firstX) {
      head.xs.push(lastX + 1);
      for (const f of ['temperature', 'pressure', 'humidity']) head[f].push(null);
      head.n.push(0);
    }
    for (const f of BUFFER_FIELDS) st[f] = head[f].concat(st[f]);
    trimPoints(st);
  }

  // ---------- start ----------

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

    resizer = new ResizeObserver((entries) => {
      for (const e of entries) {
        const s = sized.get(e.target);
        const w = Math.floor(e.contentRect.width);
        if (s && w > 0 && w !== s.u.width) s.u.setSize({ width: w, height: s.height });
      }
    });

    // JS owns the cards from here; colours follow name order for the stations already known.
    $('stations').replaceChildren();
    for (const name of [...new Set(readings.map((r) => r && r.station).filter((s) => typeof s === 'string'))].sort(byName)) {
      newStation(name);
    }
    for (const r of readings) ingest(r, null);
    if (isNewer(init.last_id, state.highest)) state.highest = parseId(init.last_id);
    rebuildTable();

    const pressed = document.querySelector('#window-selector button[aria-pressed="true"]');
    setWindow(Number(pressed?.dataset.minutes) || 15);
    $('window-selector').addEventListener('click', (e) => {
      const b = e.target.closest('button[data-minutes]');
      if (b) setWindow(Number(b.dataset.minutes));
    });
    $('station-filter').addEventListener('change', (e) => {
      state.filter = e.target.value;
      state.pausedNew = 0;
      renderPauseLabel();
      rebuildTable();
    });
    $('pause').addEventListener('click', () => setPaused(!state.paused));
    darkScheme.addEventListener('change', () => {
      for (const st of state.stations.values()) { setColor(st); st.spark?.destroy(); st.spark = null; }
      state.chartsRebuild = true;
      schedule();
    });

    if (typeof uPlot !== 'function') {
      console.error('sensorhub: uPlot did not load; charts are off');
      chartsEnabled = false;
    }
    tick();
    setInterval(tick, 1000);
    connect();
    loadHistory(readings).catch((err) => console.info('sensorhub: no history for the charts:', err.message));
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
