// The connection pill (live / reconnecting / offline): one place that writes it, whichever tab owns the stream.
import { $ } from './dom.js';

export function showPill(state, label) {
  const pill = $('connection');
  pill.dataset.state = state;
  pill.querySelector('.pill-label').textContent = label || state;
}
