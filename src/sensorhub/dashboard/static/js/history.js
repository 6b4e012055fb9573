// The page carries only the newest readings. The charts want what came before them: fetched from
// the API, strictly older than the page's first reading, so nothing is counted twice. This also
// brings back stations that went quiet a while ago, which then show as stale.
import { isNewer, parseId } from './order.js';
import { MAX_AGE_S } from './series.js';

const BUDGET = 20000;            // older readings fetched at start to fill the charts
const PAGE = 5000;
const PAGE_READINGS = 500;       // what the server puts in the page

// Resolves to the older readings, oldest first, or null when the page already holds the whole log.
export async function fetchOlder(readings) {
  if (readings.length < PAGE_READINGS) return null;
  const first = parseId(readings[0].log_id), last = parseId(readings[readings.length - 1].log_id);
  if (!first || !last) return null;
  const firstMs = Number(first[0]);
  const spanMs = Math.max(1, Number(last[0]) - firstMs);
  const wantMs = Math.min(MAX_AGE_S * 1000, (BUDGET * spanMs) / readings.length);
  let after = `${Math.max(0, Math.floor(firstMs - wantMs))}-0`;
  const older = [];
  while (older.length < BUDGET) {
    const body = await fetchPage(after);
    const page = Array.isArray(body.readings) ? body.readings : [];
    let done = page.length < PAGE || typeof body.last_id !== 'string';
    for (const r of page) {
      const id = r && parseId(r.log_id);
      if (!id) continue;
      if (!isNewer(readings[0].log_id, id)) { done = true; break; } // reached the page's readings
      older.push(r);
    }
    if (done) break;
    after = body.last_id;
  }
  return older;
}

// One page of the log after `after`, as the API gives it: { readings, last_id }.
export async function fetchPage(after, limit = PAGE) {
  const url = new URL('api/readings', document.baseURI);
  url.searchParams.set('after', after);
  url.searchParams.set('limit', String(limit));
  const res = await fetch(url, { cache: 'no-store' });
  if (!res.ok) throw new Error(`GET api/readings answered ${res.status}`);
  return res.json();
}
