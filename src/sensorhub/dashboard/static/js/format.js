// How times and numbers read on the page. Pure functions: no DOM, no state.

export const finite = (v) => typeof v === 'number' && Number.isFinite(v);

// RFC 3339 with any number of fraction digits and any offset (Date.parse is not reliable past ms).
const TS_RE = /^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:[Zz]|([+-])(\d\d):?(\d\d))$/;

export function parseTs(s) {
  const m = typeof s === 'string' ? TS_RE.exec(s) : null;
  if (!m) return typeof s === 'string' ? Date.parse(s) : NaN;
  const frac = m[7] ? Number((m[7] + '00').slice(0, 3)) : 0;
  let ms = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6], frac);
  if (m[8]) ms -= (m[8] === '+' ? 1 : -1) * (+m[9] * 60 + +m[10]) * 60000;
  return ms;
}

const fmtClock = new Intl.DateTimeFormat(undefined,
  { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' });
const fmtHM = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
const fmtDay = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
const fmtFull = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

export const clock = (ms) => (Number.isFinite(ms) ? fmtClock.format(ms) : '—');
export const fullTime = (ms) => (Number.isFinite(ms) ? fmtFull.format(ms) : '');

export function tableTime(ms) {
  if (!Number.isFinite(ms)) return '—';
  const d = new Date(ms);
  return d.toDateString() === new Date().toDateString() ? clock(ms) : `${fmtDay.format(d)} ${clock(ms)}`;
}

export function axisTime(ms, incrS) {
  return incrS < 60 ? clock(ms) : fmtHM.format(ms);
}

export function fixed1(v) {
  if (!finite(v)) return '—';
  const s = v.toFixed(1);
  return s === '-0.0' ? '0.0' : s;
}

export function duration(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  if (s < 172800) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

export function interval(ms) {
  return ms < 10000 ? `${(ms / 1000).toFixed(ms < 1000 ? 2 : 1)} s` : duration(ms);
}
