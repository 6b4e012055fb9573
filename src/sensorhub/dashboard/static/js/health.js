// Station health as the server computes it (GET api/stations): a badge on each card, and a summary.
import { $ } from './dom.js';

const EVERY_MS = 3000;

export class Health {
  start() {
    this.refresh();
    setInterval(() => this.refresh(), EVERY_MS);
  }

  async refresh() {
    try {
      const res = await fetch(new URL('api/stations', document.baseURI), { cache: 'no-store' });
      if (!res.ok) return;
      this.show(await res.json());
    } catch (err) {
      console.info('sensorhub: station health unavailable:', err.message);
    }
  }

  show(body) {
    const byName = new Map((body.stations || []).map((s) => [s.station, s]));
    for (const card of $('stations').querySelectorAll('.card')) {
      const s = byName.get(card.dataset.station);
      const badge = card.querySelector('.health-badge');
      if (!badge) continue;
      badge.dataset.state = s ? s.state : '';
      badge.textContent = s ? s.state : '';
      card.dataset.health = s ? s.state : '';
      badge.title = s && s.usual_interval_seconds != null
        ? `silent ${s.silent_seconds} s; usually every ${s.usual_interval_seconds} s` : '';
    }
    const n = body.summary || {};
    $('health-summary').textContent =
      `${n.online || 0} online · ${n.late || 0} late · ${n.offline || 0} offline`;
  }
}
