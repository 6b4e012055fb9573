// Every reading the page holds, each once and in log order: the highest log id seen decides what
// is new, so a replay after a reconnect (Last-Event-ID) or an overlap with the page never counts twice.
import { parseTs } from './format.js';
import { START, byName, isNewer, lowerBound, parseId } from './order.js';
import { addPoint, newSeries, prependPoints } from './series.js';
import { Station } from './station.js';

export const TABLE_CAP = 500;    // rows in the table, and readings kept to rebuild it

function pushCapped(arr, item) {
  arr.push(item);
  if (arr.length > TABLE_CAP + 100) arr.splice(0, arr.length - TABLE_CAP); // amortised trim
}

export class Store {
  // onStation(station, position) runs once per new station, position in name order.
  constructor(onStation) {
    this.onStation = onStation;
    this.highest = START;        // highest log id seen, parsed
    this.stations = new Map();   // name -> Station
    this.names = [];             // sorted station names
    this.lastTsMs = NaN;         // newest reading time of any station
    this.all = [];               // last TABLE_CAP readings, oldest first
  }

  get lastId() { return this.highest.join('-'); }

  resumeFrom(id) {
    if (isNewer(id, this.highest)) this.highest = parseId(id);
  }

  ordered() { return this.names.map((n) => this.stations.get(n)); }

  station(name) {
    let st = this.stations.get(name);
    if (st) return st;
    st = new Station(name, this.stations.size);
    this.stations.set(name, st);
    const at = lowerBound(this.names, name);
    this.names.splice(at, 0, name);
    this.onStation(st, at);
    return st;
  }

  // Stations first seen in `names` get their colours in name order.
  addStations(names) {
    for (const name of [...new Set(names.filter((s) => typeof s === 'string'))].sort(byName)) this.station(name);
  }

  // Returns the reading's station, or null for a reading already held (or not a reading).
  ingest(r, arrival) {
    if (!r || typeof r !== 'object' || typeof r.station !== 'string') return null;
    if (!isNewer(r.log_id, this.highest)) return null; // replayed or already rendered
    this.highest = parseId(r.log_id);

    const tsMs = parseTs(r.ts);
    const st = this.station(r.station);
    if (typeof r.address === 'string') st.address = r.address;
    if (Number.isFinite(tsMs)) {
      addPoint(st.series, tsMs, r, st.staleMs);
      if (tsMs > st.lastTsMs && Number.isFinite(st.lastTsMs)) st.recordGap(tsMs - st.lastTsMs);
      if (tsMs >= st.lastTsMs || !st.latest) { st.lastTsMs = tsMs; st.latest = r; }
      if (arrival != null) st.recordOffset(arrival - tsMs);
      this.noteTs(tsMs);
    } else if (!st.latest) {
      st.latest = r;
    }
    pushCapped(this.all, r);
    pushCapped(st.recent, r);
    return st;
  }

  // Readings older than all held ones (from the API) fill the charts and the rhythm; returns the
  // stations they touched.
  mergeOlder(older) {
    const byStation = new Map();
    for (const r of older) {
      if (!r || typeof r.station !== 'string') continue;
      if (!byStation.has(r.station)) byStation.set(r.station, []);
      byStation.get(r.station).push(r);
    }
    const touched = [];
    for (const [name, list] of byStation) {
      const st = this.station(name);
      this.mergeStation(st, list);
      touched.push(st);
    }
    return touched;
  }

  mergeStation(st, list) {
    const tmp = newSeries();
    let prevTs = NaN, newest = null;
    for (const r of list) {
      const ts = parseTs(r.ts);
      if (!Number.isFinite(ts)) continue;
      if (ts > prevTs && !st.gaps.full) st.recordGap(ts - prevTs);
      prevTs = ts;
      newest = r;
      addPoint(tmp, ts, r, st.staleMs);
    }
    prependPoints(st.series, tmp, st.staleMs);
    if (!st.latest && newest) {
      st.latest = newest;
      st.lastTsMs = parseTs(newest.ts);
      if (typeof newest.address === 'string') st.address = newest.address;
      this.noteTs(st.lastTsMs);
    }
    const room = TABLE_CAP - st.recent.length;
    if (room > 0) st.recent = list.slice(-room).concat(st.recent);
  }

  noteTs(tsMs) {
    if (!(tsMs <= this.lastTsMs)) this.lastTsMs = tsMs;
  }
}
