// Many tabs, one connection. A browser allows 6 HTTP/1.1 connections per origin, so a stream per tab
// starves the 7th. The tabs of one user's dashboard elect a leader with the Web Locks API (the lock is
// held for the tab's life and passes to the next waiting tab when it closes); only the leader opens
// the transport, and it relays every reading, the pill state and gap notices over a BroadcastChannel.
//
// Exact resume: every tab keeps its own store, which holds every reading of the log up to its highest
// id. The leader sends with each reading `prev`, the id it held before it; a follower whose highest is
// older than `prev` has a hole (it joined late, or missed messages), holds the relay back, and fills
// the hole from /api/readings first. A new leader resumes its transport from its own highest id.
import { isNewer, parseId, START } from './order.js';

const FILL_PAGE = 5000;
const FILL_MAX_PAGES = 200;
const BUFFER_MAX = 20000;        // relays held back during a fill; the fill reads to the log's end anyway
const RETRY_FIRST_MS = 1000;
const RETRY_CAP_MS = 30000;

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

export class TabShare {
  // name: the lock's and the channel's; lastId(): the store's highest id; accept(r, arrival): ingest one
  // reading, true if it was new; onState(state, label), onGap(gap): show them; openTransport(lastId,
  // handlers): the leader's stream; fetchAfter(after, limit): one /api/readings page.
  constructor({ name, lastId, accept, onState, onGap, openTransport, fetchAfter }) {
    Object.assign(this, { name, lastId, accept, onState, onGap, openTransport, fetchAfter });
    this.role = 'waiting';
    this.channel = null;
    this.state = null;           // the leader's last pill state, for tabs that join
    this.buffer = [];
    this.filling = null;
    this.covered = START;        // where the last fill reached in the log (past expired entries too)
  }

  start() {
    if (!navigator.locks || typeof BroadcastChannel !== 'function') {
      this.lead();               // nothing to share with: this tab streams on its own
      return;
    }
    this.channel = new BroadcastChannel(this.name);
    this.channel.onmessage = (ev) => this.receive(ev.data);
    window.addEventListener('pagehide', () => { if (this.role === 'leader') this.post({ t: 'bye' }); });
    navigator.locks.request(this.name, { ifAvailable: true }, (lock) => {
      if (lock) return this.lead();
      this.follow();
      navigator.locks.request(this.name, () => this.lead());
      return undefined;
    });
  }

  post(msg) {
    if (this.channel) this.channel.postMessage(msg);
  }

  // Shown on <html data-stream-role>, for a person (or a test) asking which tab holds the stream.
  setRole(role) {
    this.role = role;
    document.documentElement.dataset.streamRole = role;
  }

  lead() {
    this.setRole('leader');      // relays of a closing leader are ignored: our transport replays from our id
    this.buffer = [];
    this.transport = this.openTransport(this.lastId, {
      onReading: (r) => {
        const prev = this.lastId();
        if (this.accept(r, Date.now())) this.post({ t: 'reading', r, prev });
      },
      onState: (state, label) => {
        this.state = { state, label };
        this.onState(state, label);
        this.post({ t: 'state', ...this.state });
      },
      onGap: (gap) => {
        this.onGap(gap);
        this.post({ t: 'gap', gap });
      },
    });
    this.transport.start();
    return new Promise(() => {}); // never settles: the lock is this tab's until it closes
  }

  follow() {
    this.setRole('follower');
    this.onState('reconnecting', 'connecting'); // until the leader tells its state
    this.post({ t: 'hello' });
    this.fill(); // the server rendered our page a moment before we heard any relay
  }

  receive(msg) {
    if (!msg || typeof msg !== 'object') return;
    if (msg.t === 'hello') {
      if (this.role === 'leader' && this.state) this.post({ t: 'state', ...this.state });
      return;
    }
    if (this.role !== 'follower') return;
    if (msg.t === 'reading') this.relayed(msg);
    else if (msg.t === 'state') this.onState(msg.state, msg.label);
    else if (msg.t === 'bye') this.onState('reconnecting');
    else if (msg.t === 'gap' && msg.gap) this.onGap(msg.gap);
  }

  relayed(msg) {
    const hole = typeof msg.prev === 'string'
      && isNewer(msg.prev, parseId(this.lastId())) && isNewer(msg.prev, this.covered);
    if (this.filling || hole) {
      this.buffer.push(msg);
      if (this.buffer.length > BUFFER_MAX) this.buffer.splice(0, this.buffer.length - BUFFER_MAX);
      this.fill();
      return;
    }
    this.accept(msg.r, Date.now());
  }

  fill() {
    if (!this.filling) {
      this.filling = this.fillUntilDone().finally(() => {
        this.filling = null;
        this.drain();
      });
    }
    return this.filling;
  }

  async fillUntilDone() {
    let delay = RETRY_FIRST_MS;
    while (this.role === 'follower') {
      try {
        await this.fetchToEnd();
        return;
      } catch (err) {
        console.info('sensorhub: could not fill in from the API yet:', err.message);
        await sleep(delay);
        delay = Math.min(delay * 2, RETRY_CAP_MS);
      }
    }
  }

  // Every reading after the store's highest id, to the end of the log.
  async fetchToEnd() {
    let after = this.lastId();
    for (let i = 0; i < FILL_MAX_PAGES; i++) {
      const body = await this.fetchAfter(after, FILL_PAGE);
      for (const r of Array.isArray(body.readings) ? body.readings : []) this.accept(r, null);
      const next = typeof body.last_id === 'string' ? parseId(body.last_id) : null;
      if (!next || !isNewer(body.last_id, parseId(after))) return;
      if (isNewer(body.last_id, this.covered)) this.covered = next;
      after = body.last_id;
    }
  }

  drain() {
    const held = this.buffer;
    this.buffer = [];
    if (this.role !== 'follower') return;
    for (const msg of held) this.relayed(msg);
  }
}
