// "Readings from … to … expired while you were away": said when the stream resumed from an id the log
// had already trimmed, so the table is never taken for complete. Times come from the log ids' ms.
import { $ } from './dom.js';
import { fullTime, tableTime } from './format.js';
import { parseId } from './order.js';

const idMs = (id) => {
  const p = parseId(id);
  return p ? Number(p[0]) : NaN;
};

export class GapNotice {
  constructor() {
    this.box = $('gap-notice');
    this.fromMs = NaN;
    this.toMs = NaN;
    $('gap-dismiss').addEventListener('click', () => { this.box.hidden = true; });
  }

  // gap: { from, to } log ids: readings after `from` and before `to` are gone. Two gaps in a row
  // before a dismissal read as one span.
  show(gap) {
    const from = idMs(gap.from), to = idMs(gap.to);
    if (!Number.isFinite(to)) return;
    if (this.box.hidden || !(this.fromMs <= from)) this.fromMs = from;
    if (this.box.hidden || !(this.toMs >= to)) this.toMs = to;
    this.put($('gap-from'), this.fromMs > 0 ? this.fromMs : NaN);
    this.put($('gap-to'), this.toMs);
    this.box.hidden = false;
  }

  put(el, ms) {
    el.textContent = Number.isFinite(ms) ? tableTime(ms) : 'the start';
    el.title = fullTime(ms);
    if (Number.isFinite(ms)) el.dateTime = new Date(ms).toISOString();
    else el.removeAttribute('datetime');
  }
}
