// The live table: newest first, TABLE_CAP rows, a station filter and a pause that counts what it holds back.
import { $, cloneTemplate } from './dom.js';
import { fixed1, fullTime, parseTs, tableTime } from './format.js';
import { byName } from './order.js';
import { TABLE_CAP } from './store.js';

const MIN_MS = 250;              // a table re-laid out 60 times a second costs a lot and nobody reads it

function makeRow(r) {
  const tr = cloneTemplate('row-template');
  tr.dataset.logId = r.log_id;
  tr.dataset.station = r.station;
  const ms = parseTs(r.ts);
  const time = tr.querySelector('time');
  time.textContent = tableTime(ms);
  if (typeof r.ts === 'string') time.dateTime = r.ts;
  time.title = fullTime(ms);
  const cells = tr.cells;
  cells[1].textContent = r.station;
  cells[2].textContent = String(r.address ?? '');
  cells[3].textContent = fixed1(r.temperature);
  cells[4].textContent = fixed1(r.pressure);
  cells[5].textContent = fixed1(r.humidity);
  return tr;
}

export class Table {
  // store: where the rows come from when the table is rebuilt (after a filter change or a pause).
  constructor(store) {
    this.store = store;
    this.filter = '';
    this.paused = false;
    this.pausedNew = 0;          // readings held back by the pause, for the button's label
    this.labelDirty = false;
    this.pending = [];           // readings to put on top at the next draw, oldest first
    this.tbody = $('readings').tBodies[0];
    this.select = $('station-filter');
    this.button = $('pause');
  }

  bind() {
    this.select.addEventListener('change', (e) => this.setFilter(e.target.value));
    this.button.addEventListener('click', () => this.setPaused(!this.paused));
  }

  add(r) {
    if (this.filter && this.filter !== r.station) return;
    if (this.paused) {
      this.pausedNew++;
      this.labelDirty = true;
    } else {
      this.pending.push(r);
      if (this.pending.length > 2 * TABLE_CAP) this.pending.splice(0, this.pending.length - TABLE_CAP);
    }
  }

  addOption(name) {
    const opts = Array.from(this.select.options).slice(1);
    if (opts.some((o) => o.value === name)) return;
    const next = opts.find((o) => byName(o.value, name) > 0) || null;
    const opt = document.createElement('option');
    opt.value = name;
    opt.textContent = name;
    this.select.insertBefore(opt, next);
  }

  wait() { return this.pending.length || this.labelDirty ? MIN_MS : Infinity; }

  draw() {
    this.prependPending();
    if (this.labelDirty) this.renderLabel();
  }

  prependPending() {
    if (this.paused || !this.pending.length) return;
    const rows = this.pending.length > TABLE_CAP ? this.pending.slice(-TABLE_CAP) : this.pending;
    this.pending = [];
    const frag = document.createDocumentFragment();
    for (let i = rows.length - 1; i >= 0; i--) frag.append(makeRow(rows[i]));
    this.tbody.prepend(frag);
    for (let extra = this.tbody.rows.length - TABLE_CAP; extra > 0; extra--) this.tbody.lastElementChild.remove();
    $('readings-empty').hidden = true;
  }

  rebuild() {
    const src = this.filter ? (this.store.stations.get(this.filter)?.recent ?? []) : this.store.all;
    const frag = document.createDocumentFragment();
    for (let i = src.length - 1, k = 0; i >= 0 && k < TABLE_CAP; i--, k++) frag.append(makeRow(src[i]));
    this.tbody.replaceChildren(frag);
    this.pending = [];
    $('readings-empty').hidden = this.tbody.rows.length > 0;
  }

  // Older readings arrived (history): a filtered, running table shows them too.
  refresh() {
    if (this.filter && !this.paused) this.rebuild();
  }

  setFilter(name) {
    this.filter = name;
    this.pausedNew = 0;
    this.renderLabel();
    this.rebuild();
  }

  setPaused(paused) {
    this.paused = paused;
    this.pausedNew = 0;
    this.button.setAttribute('aria-pressed', String(paused));
    this.button.classList.toggle('is-paused', paused);
    this.tbody.closest('.table-wrap').classList.toggle('paused', paused);
    this.renderLabel();
    if (!paused) this.rebuild(); // shows everything buffered meanwhile, in order
  }

  renderLabel() {
    this.labelDirty = false;
    this.button.textContent = this.paused ? (this.pausedNew ? `Resume · ${this.pausedNew} new` : 'Resume') : 'Pause';
  }
}
