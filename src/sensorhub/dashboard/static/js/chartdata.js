// Every station on one x axis, as uPlot wants it: undefined where a station has no point (the line
// spans it), null for a gap (the line breaks).
import { lowerBound } from './order.js';
import { QUANTITIES } from './series.js';

export function chartData(stations, xMin, xMax) {
  const span = xMax - xMin + 1;
  const present = new Uint8Array(span);
  const starts = stations.map(({ series: s }) => {
    const i0 = lowerBound(s.xs, xMin);
    for (let i = i0; i < s.xs.length && s.xs[i] <= xMax; i++) present[s.xs[i] - xMin] = 1;
    return i0;
  });
  const xs = [];
  const pos = new Int32Array(span);
  for (let k = 0; k < span; k++) if (present[k]) { pos[k] = xs.length; xs.push(xMin + k); }
  const out = {};
  for (const q of QUANTITIES) out[q.key] = [xs];
  stations.forEach(({ series: s }, si) => {
    for (const q of QUANTITIES) out[q.key].push(column(s, s[q.key], starts[si], xMin, xMax, pos, xs.length));
  });
  return out;
}

function column(s, src, start, xMin, xMax, pos, length) {
  const ys = new Array(length).fill(undefined);
  let gapFrom = -1;
  for (let i = start; i < s.xs.length && s.xs[i] <= xMax; i++) {
    const p = pos[s.xs[i] - xMin];
    if (s.n[i] === 0) {
      if (gapFrom < 0) gapFrom = p;
    } else {
      // uPlot only breaks the line over the null run itself: widen it to this station's next point.
      if (gapFrom >= 0) { ys.fill(null, gapFrom, p); gapFrom = -1; }
      ys[p] = src[i];
    }
  }
  return ys;
}
