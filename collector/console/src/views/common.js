// What the views share: the time grid of their charts and cards that fill themselves.

import { range, instant } from '../api.js';
import { chartBox, drawChart } from '../chart.js';
import { card, errorBox, h } from '../dom.js';
import { rateWindow, stepFor } from '../promql.js';

/**
 * The grid of a range query for a chart `width` pixels wide: steps aligned to multiples of
 * the step, so a refresh extends the same grid.
 */
export function grid(ctx, width) {
  const step = stepFor(ctx.rangeSeconds, width);
  const end = Math.floor(ctx.now / step) * step;
  return { start: end - Math.floor(ctx.rangeSeconds / step) * step, end, step };
}

/**
 * Appends a card with a chart of `build(window, step)` (a PromQL expression) to the page and
 * queues its query. `opts` are drawChart's, and `wide` spans the page's width.
 */
export function chartCard(ctx, title, build, opts = {}) {
  const box = chartBox();
  const c = card(title, box);
  if (opts.wide) c.classList.add('wide');
  ctx.page.append(c);
  ctx.task(async () => {
    const g = grid(ctx, box.clientWidth || ctx.page.clientWidth);
    try {
      const m = await range(build(rateWindow(g.step), g.step), g.start, g.end, g.step);
      if (ctx.current()) drawChart(box, m, g, opts);
    } catch (e) {
      box.dataset.state = 'error';
      box.replaceChildren(errorBox(e));
    }
  });
  return c;
}

/** A row of figures, each from an instant query's single value (or `value()`). */
export function tiles(ctx, items) {
  const row = h('div', { class: 'tiles' });
  ctx.page.append(row);
  for (const it of items) {
    const v = h('div', { class: 'tile-value' }, '…');
    row.append(h('div', { class: 'tile' }, h('div', { class: 'tile-label' }, it.label), v,
      it.note ? h('div', { class: 'tile-note' }, it.note) : null));
    ctx.task(async () => {
      try {
        if (it.value) {
          v.textContent = await it.value();
          return;
        }
        const r = await instant(it.query, ctx.now);
        v.textContent = r.length ? it.format(parseFloat(r[0].value[1])) : '–';
      } catch (e) {
        v.replaceChildren(errorBox(e));
      }
    });
  }
}
