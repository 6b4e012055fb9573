// Alerts: the banner while a rule fires (with acknowledge), the history, and the rules form and list.
// What fires comes from the server (GET api/alerts: the log after our cursor, and what fires now); it is
// fetched at start, on every (re)connect of the stream, on every live alert event, and every few seconds
// (the tabs that do not hold the stream see alerts that way). Text reaches the DOM via textContent only.
import { $, cloneTemplate } from './dom.js';
import { fullTime, parseTs, tableTime } from './format.js';

const EVERY_MS = 3000;
const HISTORY = 100;
const UNITS = { temperature: '°C', pressure: 'hPa', humidity: '%' };

function describeRule(r) {
  const where = r.station === '*' ? 'any station' : r.station;
  if (r.kind === 'offline') return `${where} goes offline`;
  const unit = UNITS[r.quantity] || '';
  const hold = r.for_seconds ? ` for ${r.for_seconds} s` : '';
  return `${r.quantity} ${r.kind} ${r.value} ${unit}${hold} at ${where} (clears ${r.kind === 'above' ? 'below' : 'above'} ${r.clear})`;
}

function describeAlert(a) {
  const rule = a.rule || {};
  if (rule.kind === 'offline') {
    return a.state === 'firing' ? `${a.station} is offline (silent ${a.value} s)` : `${a.station} is back online`;
  }
  return `${a.station}: ${a.quantity} ${a.value} ${UNITS[a.quantity] || ''} — ${describeRule(rule)}`;
}

export class Alerts {
  constructor() {
    this.after = null;          // alert log cursor
    this.history = [];          // newest last
    this.firing = [];
    this.rules = [];
    this.busy = false;
    this.again = false;
  }

  start() {
    $('rule-form').addEventListener('submit', (ev) => { ev.preventDefault(); this.addRule(ev.target); });
    $('rule-form').elements.kind.addEventListener('change', () => this.showThresholdFields());
    this.showThresholdFields();
    this.loadRules();
    this.refresh();
    setInterval(() => this.refresh(), EVERY_MS);
  }

  showThresholdFields() {
    const offline = $('rule-form').elements.kind.value === 'offline';
    for (const el of $('rule-form').querySelectorAll('.threshold')) el.hidden = offline;
  }

  // Fetch what is new; calls that come while one runs are folded into one more.
  async refresh() {
    if (this.busy) { this.again = true; return; }
    this.busy = true;
    try {
      do {
        this.again = false;
        const url = new URL('api/alerts', document.baseURI);
        if (this.after) url.searchParams.set('after', this.after);
        url.searchParams.set('limit', String(HISTORY));
        const res = await fetch(url, { cache: 'no-store' });
        if (!res.ok) break;
        const body = await res.json();
        this.history = this.history.concat(body.alerts || []).slice(-HISTORY);
        this.after = body.last_id || this.after;
        this.firing = body.firing || [];
        this.draw();
      } while (this.again);
    } catch (err) {
      console.info('sensorhub: alerts unavailable:', err.message);
    } finally {
      this.busy = false;
    }
  }

  // The newest `firing` event of a (rule, station) that fires now.
  latestFiring(ruleId, station) {
    for (let i = this.history.length - 1; i >= 0; i--) {
      const a = this.history[i];
      if (a.rule && a.rule.id === ruleId && a.station === station) return a.state === 'firing' ? a : null;
    }
    return null;
  }

  draw() {
    const items = [];
    for (const f of this.firing) {
      const a = this.latestFiring(f.rule.id, f.station);
      if (a && a.acknowledged) continue;
      const li = cloneTemplate('firing-template');
      li.dataset.rule = f.rule.id;
      li.dataset.station = f.station;
      li.querySelector('.firing-text').textContent = a ? describeAlert(a) : `${f.station}: ${describeRule(f.rule)}`;
      const ack = li.querySelector('.alert-ack');
      if (a) ack.addEventListener('click', () => this.acknowledge(a));
      else ack.hidden = true;
      items.push(li);
    }
    $('alert-firing').replaceChildren(...items);
    $('alert-banner').hidden = items.length === 0;

    const rows = this.history.slice().reverse().map((a) => {
      const li = cloneTemplate('history-template');
      li.dataset.state = a.state;
      const ms = parseTs(a.ts);
      const time = li.querySelector('.history-time');
      time.textContent = tableTime(ms);
      time.title = fullTime(ms);
      li.querySelector('.history-state').textContent = a.state + (a.acknowledged ? ' (acknowledged)' : '');
      li.querySelector('.history-text').textContent = describeAlert(a);
      return li;
    });
    $('alert-history').replaceChildren(...rows);
    $('alert-history-empty').hidden = rows.length > 0;
  }

  async acknowledge(alert) {
    const res = await fetch(new URL('api/alerts/ack', document.baseURI), {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ id: alert.id }),
    }).catch(() => null);
    if (res && res.ok) {
      alert.acknowledged = true;
      this.draw();
    }
  }

  async loadRules() {
    const res = await fetch(new URL('api/rules', document.baseURI), { cache: 'no-store' }).catch(() => null);
    if (!res || !res.ok) return;
    this.rules = (await res.json()).rules || [];
    const items = this.rules.map((r) => {
      const li = cloneTemplate('rule-template');
      li.dataset.rule = r.id;
      li.querySelector('.rule-text').textContent = describeRule(r);
      li.querySelector('.rule-delete').addEventListener('click', () => this.deleteRule(r.id));
      return li;
    });
    $('rules').replaceChildren(...items);
    $('rules-empty').hidden = items.length > 0;
  }

  async addRule(form) {
    const f = form.elements;
    const rule = { station: f.station.value.trim() || '*', kind: f.kind.value };
    if (rule.kind !== 'offline') {
      rule.quantity = f.quantity.value;
      if (f.value.value !== '') rule.value = Number(f.value.value);
      if (f.clear.value !== '') rule.clear = Number(f.clear.value);
      if (f.for_seconds.value !== '') rule.for_seconds = Number(f.for_seconds.value);
    }
    const res = await fetch(new URL('api/rules', document.baseURI), {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(rule),
    }).catch(() => null);
    const error = $('rule-error');
    if (!res) {
      error.textContent = 'the dashboard could not be reached; try again';
      error.hidden = false;
    } else if (res.ok) {
      error.hidden = true;
      await this.loadRules();
    } else {
      const body = await res.json().catch(() => ({}));
      error.textContent = body.error || `the rule was refused (${res.status})`;
      error.hidden = false;
    }
  }

  async deleteRule(id) {
    const url = new URL('api/rules', document.baseURI);
    url.searchParams.set('id', id);
    await fetch(url, { method: 'DELETE' }).catch(() => null);
    await this.loadRules();
    this.refresh();
  }
}
