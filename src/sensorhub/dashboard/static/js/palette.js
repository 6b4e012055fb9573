// One colour per station, kept for the session; lighter shades on a dark background.
const LIGHT = ['#2563eb', '#dc2626', '#059669', '#d97706', '#7c3aed',
  '#db2777', '#0891b2', '#65a30d', '#ea580c', '#475569'];
const DARK = ['#60a5fa', '#f87171', '#34d399', '#fbbf24', '#a78bfa',
  '#f472b6', '#22d3ee', '#a3e635', '#fb923c', '#94a3b8'];

export const darkScheme = window.matchMedia('(prefers-color-scheme: dark)');

export function colorOf(index) {
  const palette = darkScheme.matches ? DARK : LIGHT;
  return index < palette.length ? palette[index]
    : `hsl(${((index * 137.508) % 360).toFixed(0)}, ${darkScheme.matches ? '70%, 65%' : '62%, 45%'})`;
}

// The colour at 13% opacity, for the area under a sparkline.
export function fillOf(color) {
  return color.startsWith('#') ? `${color}22` : color.replace('hsl(', 'hsla(').replace(')', ', 0.13)');
}

// Axis and grid colours come from the stylesheet, so charts follow the page's theme.
export function chartTheme() {
  const cs = getComputedStyle(document.documentElement);
  const v = (name, dflt) => cs.getPropertyValue(name).trim() || dflt;
  return { axis: v('--chart-axis', '#64748b'), grid: v('--chart-grid', '#e2e8f0'), font: '12px system-ui, sans-serif' };
}
