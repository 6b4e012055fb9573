// Orderings the page relies on: log ids (the one order readings are shown in) and sorted arrays.

// Log ids are "<ms>-<seq>" with integers of any size: compare digit strings by length, then text.
function cmpDigits(a, b) {
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

export const START = Object.freeze(['0', '0']);

export function parseId(id) {
  const m = typeof id === 'string' ? /^0*(\d+)-0*(\d+)$/.exec(id) : null;
  return m ? [m[1], m[2]] : null;
}

export function isNewer(id, than) { // than: parsed id
  const p = parseId(id);
  if (!p) return false;
  const c = cmpDigits(p[0], than[0]);
  return c > 0 || (c === 0 && cmpDigits(p[1], than[1]) > 0);
}

export function lowerBound(arr, v) {
  let lo = 0, hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (arr[mid] < v) lo = mid + 1; else hi = mid;
  }
  return lo;
}

export const byName = (a, b) => (a < b ? -1 : a > b ? 1 : 0); // same code-point order as the template
