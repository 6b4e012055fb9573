// The SSE transport: one EventSource that resumes after the highest log id the page holds.
// A transport is { start() } built with (lastId, { onReading, onState, onGap }); see transport_ws.js.

const RETRY_MAX_MS = 30000;

export function parseJson(text, what) {
  try { return JSON.parse(text); } catch {
    console.warn(`sensorhub: ignoring ${what} that is not JSON`);
    return undefined;
  }
}

export class Stream {
  // lastId(): where to resume; onReading(reading), onState(state, label), onGap({ from, to }) with log ids.
  constructor(lastId, { onReading, onState, onGap, onAlert }) {
    this.lastId = lastId;
    this.onAlert = onAlert || (() => {});
    this.onReading = onReading;
    this.onState = onState;
    this.onGap = onGap;
    this.source = undefined;     // undefined before the first connect, null while waiting to retry
    this.retryTimer = 0;
    this.retryDelay = 1000;
  }

  start() {
    window.addEventListener('offline', () => this.onState('offline'));
    window.addEventListener('online', () => {
      if (!this.source) this.connect();
      else if (this.source.readyState === EventSource.OPEN) this.onState('live');
      else this.onState('reconnecting');
    });
    this.connect();
  }

  connect() {
    clearTimeout(this.retryTimer);
    const url = new URL('events', document.baseURI);
    url.searchParams.set('last_id', this.lastId());
    const es = new EventSource(url.href);
    const first = this.source === undefined;
    this.source = es;
    // After a give-up the pill stays "offline" until a new stream actually opens.
    if (first) this.onState(navigator.onLine === false ? 'offline' : 'reconnecting', 'connecting');
    es.addEventListener('open', () => {
      this.retryDelay = 1000;
      this.onState('live');
    });
    es.addEventListener('error', () => this.failed(es));
    es.addEventListener('reading', (ev) => this.read(ev));
    es.addEventListener('gap', (ev) => this.gap(ev));
    es.addEventListener('alert', (ev) => this.onAlert(parseJson(ev.data, 'an alert')));
  }

  failed(es) {
    if (es !== this.source) return;
    if (es.readyState === EventSource.CLOSED) {
      // The browser gave up (e.g. an answer that is not SSE): start over from the highest id we hold.
      this.source = null;
      this.onState('offline');
      this.retryTimer = setTimeout(() => this.connect(), this.retryDelay);
      this.retryDelay = Math.min(this.retryDelay * 2, RETRY_MAX_MS);
    } else {
      // EventSource retries by itself and sends Last-Event-ID.
      this.onState(navigator.onLine === false ? 'offline' : 'reconnecting');
    }
  }

  read(ev) {
    const r = parseJson(ev.data, 'an event');
    if (r && typeof r === 'object' && typeof r.log_id !== 'string' && ev.lastEventId) r.log_id = ev.lastEventId;
    if (r !== undefined) this.onReading(r);
  }

  // Sent first on a resume from an id the log no longer holds: readings after ours, before oldest_id, are gone.
  gap(ev) {
    const g = parseJson(ev.data, 'a gap event');
    if (!g || typeof g.oldest_id !== 'string') return;
    const from = [g.last_id, g.after, g.resume_id].find((v) => typeof v === 'string') || this.lastId();
    this.onGap({ from, to: g.oldest_id });
  }
}
