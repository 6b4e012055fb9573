// The WebSocket transport (?transport=ws): /ws resumes by ?last_id, so reconnecting is ours to do:
// exponential backoff with jitter, always from the highest log id the page holds. Same shape as Stream.
import { parseJson } from './stream.js';

const FIRST_MS = 500;
const CAP_MS = 30000;
const TOO_SLOW = 1013;           // the server dropped us for falling behind: resume at once
const SILENCE_MS = 40000;        // the server sends a frame (a ping if nothing else) every 15 s

export class WsTransport {
  constructor(lastId, { onReading, onState, onGap, onAlert }) {
    this.onAlert = onAlert || (() => {});
    this.lastId = lastId;
    this.onReading = onReading;
    this.onState = onState;
    this.onGap = onGap;
    this.socket = null;
    this.opened = false;         // the current socket got through its handshake
    this.everOpened = false;
    this.retryTimer = 0;
    this.silenceTimer = 0;
    this.delay = FIRST_MS;
  }

  start() {
    window.addEventListener('offline', () => this.onState('offline'));
    window.addEventListener('online', () => {
      if (this.socket && this.socket.readyState === WebSocket.OPEN) this.onState('live');
      else this.connect();       // don't sit out the backoff once the network is back
    });
    this.connect();
  }

  connect() {
    clearTimeout(this.retryTimer);
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) return;
    const url = new URL('ws', document.baseURI);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const resume = this.lastId();
    url.searchParams.set('last_id', resume);
    const ws = new WebSocket(url.href);
    this.socket = ws;
    this.opened = false;
    if (!this.everOpened) this.onState(navigator.onLine === false ? 'offline' : 'reconnecting', 'connecting');
    ws.addEventListener('open', () => {
      this.opened = this.everOpened = true;
      this.delay = FIRST_MS;
      this.onState('live');
      this.watch(ws);
    });
    ws.addEventListener('message', (ev) => this.message(ev, resume));
    ws.addEventListener('close', (ev) => this.closed(ws, ev.code));
  }

  // A connection that went silent (a dead network path sends no close) is given up and replaced.
  watch(ws) {
    clearTimeout(this.silenceTimer);
    this.silenceTimer = setTimeout(() => {
      ws.close();
      this.closed(ws, 1006);     // its close event may come much later, and is ignored then
    }, SILENCE_MS);
  }

  message(ev, resume) {
    if (ev.target !== this.socket) return; // one given up on
    this.watch(ev.target);
    const msg = typeof ev.data === 'string' ? parseJson(ev.data, 'a frame') : undefined;
    if (!msg || typeof msg !== 'object') return;
    if (msg.type === 'reading' && msg.reading && typeof msg.reading === 'object') {
      const r = msg.reading;
      if (typeof r.log_id !== 'string' && typeof msg.id === 'string') r.log_id = msg.id;
      this.onReading(r);
    } else if (msg.type === 'gap' && typeof msg.oldest_id === 'string') {
      this.onGap({ from: typeof msg.last_id === 'string' ? msg.last_id : resume, to: msg.oldest_id });
    } else if (msg.type === 'alert') {
      this.onAlert(msg);
    }
  }

  closed(ws, code) {
    if (ws !== this.socket) return;
    clearTimeout(this.silenceTimer);
    this.socket = null;
    this.onState(navigator.onLine === false ? 'offline' : 'reconnecting');
    const base = code === TOO_SLOW ? FIRST_MS : this.delay;
    if (!this.opened || code !== TOO_SLOW) this.delay = Math.min(this.delay * 2, CAP_MS);
    // Half to all of the delay: a restarted server is not met by every browser in the same instant.
    this.retryTimer = setTimeout(() => this.connect(), base / 2 + Math.random() * (base / 2));
  }
}
