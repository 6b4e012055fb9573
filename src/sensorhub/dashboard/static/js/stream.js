// The one EventSource: resumes after the highest log id the page holds, and shows its state in the pill.
import { $ } from './dom.js';

const RETRY_MAX_MS = 30000;

export class Stream {
  // lastId(): where to resume; onReading(reading): each event's reading, parsed.
  constructor(lastId, onReading) {
    this.lastId = lastId;
    this.onReading = onReading;
    this.source = undefined;     // undefined before the first connect, null while waiting to retry
    this.retryTimer = 0;
    this.retryDelay = 1000;
    this.pill = $('connection');
  }

  start() {
    window.addEventListener('offline', () => this.show('offline'));
    window.addEventListener('online', () => {
      if (!this.source) this.connect();
      else if (this.source.readyState === EventSource.OPEN) this.show('live');
      else this.show('reconnecting');
    });
    this.connect();
  }

  show(state, label) {
    this.pill.dataset.state = state;
    this.pill.querySelector('.pill-label').textContent = label || state;
  }

  connect() {
    clearTimeout(this.retryTimer);
    const url = new URL('events', document.baseURI);
    url.searchParams.set('last_id', this.lastId());
    const es = new EventSource(url.href);
    const first = this.source === undefined;
    this.source = es;
    // After a give-up the pill stays "offline" until a new stream actually opens.
    if (first) this.show(navigator.onLine === false ? 'offline' : 'reconnecting', 'connecting');
    es.addEventListener('open', () => {
      this.retryDelay = 1000;
      this.show('live');
    });
    es.addEventListener('error', () => this.failed(es));
    es.addEventListener('reading', (ev) => this.read(ev));
  }

  failed(es) {
    if (es !== this.source) return;
    if (es.readyState === EventSource.CLOSED) {
      // The browser gave up (e.g. an answer that is not SSE): start over from the highest id we hold.
      this.source = null;
      this.show('offline');
      this.retryTimer = setTimeout(() => this.connect(), this.retryDelay);
      this.retryDelay = Math.min(this.retryDelay * 2, RETRY_MAX_MS);
    } else {
      // EventSource retries by itself and sends Last-Event-ID.
      this.show(navigator.onLine === false ? 'offline' : 'reconnecting');
    }
  }

  read(ev) {
    let r;
    try { r = JSON.parse(ev.data); } catch {
      console.warn('sensorhub: ignoring an event that is not JSON');
      return;
    }
    if (r && typeof r === 'object' && typeof r.log_id !== 'string' && ev.lastEventId) r.log_id = ev.lastEventId;
    this.onReading(r);
  }
}
