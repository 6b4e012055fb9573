// uPlot has a fixed size: follow each container's width.
const sized = new WeakMap();     // container -> { u, height }
const observer = new ResizeObserver((entries) => {
  for (const e of entries) {
    const s = sized.get(e.target);
    const w = Math.floor(e.contentRect.width);
    if (s && w > 0 && w !== s.u.width) s.u.setSize({ width: w, height: s.height });
  }
});

export function fitWidth(container, u, height) {
  sized.set(container, { u, height });
  observer.observe(container);
}
