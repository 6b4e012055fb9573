// A station's chart buffer: sorted by x (whole seconds); readings of the same second are averaged.
// A point with n = 0 and null values is a gap marker, so a silence stays a gap in the lines.
import { finite } from './format.js';
import { lowerBound } from './order.js';

export const QUANTITIES = [
  { key: 'temperature', unit: '°C' },
  { key: 'pressure', unit: 'hPa' },
  { key: 'humidity', unit: '%' },
];
const FIELDS = ['xs', 'temperature', 'pressure', 'humidity', 'n'];
export const MAX_AGE_S = 3600;   // chart history kept per station
const MAX_POINTS = 4000;         // hard cap on chart points per station

export function newSeries() {
  return { xs: [], temperature: [], pressure: [], humidity: [], n: [] };
}

// gapMs: silence longer than this becomes a visible gap (null) in the lines.
export function addPoint(s, tsMs, r, gapMs) {
  const t = r.temperature, p = r.pressure, h = r.humidity;
  if (!finite(t) || !finite(p) || !finite(h)) return;
  const x = Math.floor(tsMs / 1000);
  const xs = s.xs, last = xs.length - 1;
  let i;
  if (last < 0 || x > xs[last]) {
    if (last >= 0 && s.n[last] > 0 && (x - xs[last]) * 1000 > gapMs) insertAt(s, last + 1, xs[last] + 1, null, null, null, 0);
    insertAt(s, xs.length, x, t, p, h, 1);
  } else if (xs[i = lowerBound(xs, x)] === x) {
    const n = s.n[i];
    if (n === 0) { s.temperature[i] = t; s.pressure[i] = p; s.humidity[i] = h; s.n[i] = 1; return; }
    s.temperature[i] = (s.temperature[i] * n + t) / (n + 1);
    s.pressure[i] = (s.pressure[i] * n + p) / (n + 1);
    s.humidity[i] = (s.humidity[i] * n + h) / (n + 1);
    s.n[i] = n + 1;
    return;
  } else {
    insertAt(s, i, x, t, p, h, 1); // late reading, rare
  }
  trim(s);
}

// Puts the seconds of `older` that come before the first one of `s` in front of it.
export function prependPoints(s, older, gapMs) {
  const firstX = s.xs.length ? s.xs[0] : Infinity;
  const k = lowerBound(older.xs, firstX);
  if (!k) return;
  const head = {};
  for (const f of FIELDS) head[f] = older[f].slice(0, k);
  const lastX = head.xs[k - 1];
  if (firstX !== Infinity && (firstX - lastX) * 1000 > gapMs && lastX + 1 < firstX) {
    head.xs.push(lastX + 1);
    for (const q of QUANTITIES) head[q.key].push(null);
    head.n.push(0);
  }
  for (const f of FIELDS) s[f] = head[f].concat(s[f]);
  trim(s);
}

function trim(s) {
  const xs = s.xs, newest = xs[xs.length - 1];
  if (xs.length > MAX_POINTS + 200 || xs[0] < newest - MAX_AGE_S - 60) { // amortised
    const cut = Math.max(xs.length - MAX_POINTS, lowerBound(xs, newest - MAX_AGE_S));
    for (const f of FIELDS) s[f].splice(0, cut);
  }
}

function insertAt(s, i, x, t, p, h, n) {
  if (i === s.xs.length) {
    s.xs.push(x); s.temperature.push(t); s.pressure.push(p); s.humidity.push(h); s.n.push(n);
  } else {
    s.xs.splice(i, 0, x); s.temperature.splice(i, 0, t); s.pressure.splice(i, 0, p);
    s.humidity.splice(i, 0, h); s.n.splice(i, 0, n);
  }
}
