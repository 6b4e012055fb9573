// All DOM work happens in requestAnimationFrame, each kind no more often than it asks: between frames
// a timer (not a busy requestAnimationFrame loop) waits for the earliest one that is due.
// A task has wait() (ms wanted between draws, Infinity when there is nothing to draw) and draw().
export class Frames {
  constructor(tasks) {
    this.slots = tasks.map((task) => ({ task, last: -Infinity }));
    this.queued = false;
    this.timer = 0;
    this.timerAt = Infinity;
  }

  dueIn(now) {
    let d = Infinity;
    for (const s of this.slots) {
      const wait = s.task.wait();
      if (wait !== Infinity) d = Math.min(d, s.last + wait - now);
    }
    return d;
  }

  schedule() {
    if (this.queued) return;
    const now = performance.now();
    const d = this.dueIn(now);
    if (d === Infinity) return;
    if (d <= 0) {
      clearTimeout(this.timer);
      this.timer = 0;
      this.timerAt = Infinity;
      this.queued = true;
      requestAnimationFrame((t) => this.frame(t));
    } else if (now + d < this.timerAt) {
      clearTimeout(this.timer);
      this.timerAt = now + d;
      this.timer = setTimeout(() => { this.timer = 0; this.timerAt = Infinity; this.schedule(); }, d);
    }
  }

  frame(now) {
    this.queued = false;
    for (const s of this.slots) {
      const wait = s.task.wait();
      if (wait !== Infinity && now - s.last >= wait) {
        s.task.draw();
        s.last = now;
      }
    }
    this.schedule();
  }
}
