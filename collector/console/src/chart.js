// Time charts with uPlot. A chart is drawn from a range query's matrix on the query's own
// grid (start, end, step), so every series shares one x array and a missing sample is a gap.

import uPlot from 'uplot';
import { h, empty, fmtBytes, fmtNumber } from './dom.js';

const COLORS = [
  '#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed',
  '#0891b2', '#db2777', '#4b5563', '#65a30d', '#ea580c',
];
const HEIGHT = 220;

/** Value formats by unit: per-second bytes or counts, or plain numbers. */
export const UNITS = {
  bytesPerSecond: (v) => `${fmtBytes(v)}/s`,
  perSecond: (v) => `${fmtNumber(v)}/s`,
  number: fmtNumber,
};

/** The charts on screen, to resize with the window and to free when their page goes. */
const live = new Set();

addEventListener('resize', () => {
  for (const u of live) {
    const w = u.root.parentElement ? u.root.parentElement.clientWidth : 0;
    if (w > 0) u.setSize({ width: w, height: HEIGHT });
  }
});

/** Frees the charts inside `el` (a page being replaced). */
export function destroyCharts(el) {
  for (const u of [...live]) {
    if (el.contains(u.root)) {
      u.destroy();
      live.delete(u);
    }
  }
}

/** `{__name__="m", a="b"}` as `m{a="b"}`. */
export function seriesName(metric) {
  const { __name__: name = '', ...rest } = metric;
  const labels = Object.entries(rest)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}=${JSON.stringify(v)}`);
  return labels.length ? `${name}{${labels.join(', ')}}` : name || '{}';
}

/**
 * Draws `matrix` into `el` on `grid` ({start, end, step} in seconds). `label(metric)` names
 * a series in the legend; `unit` is a key of UNITS. Sets `el.dataset.points` to the number
 * of samples drawn and `el.dataset.state` to "ready" or "empty".
 */
export function drawChart(el, matrix, grid, { label = seriesName, unit = 'number' } = {}) {
  el.replaceChildren();
  const n = Math.floor((grid.end - grid.start) / grid.step) + 1;
  const xs = Array.from({ length: n }, (_, i) => grid.start + i * grid.step);
  const fmt = UNITS[unit] || UNITS.number;
  const sorted = [...matrix].sort((a, b) => label(a.metric).localeCompare(label(b.metric)));
  let points = 0;
  const ys = sorted.map((s) => {
    const col = new Array(n).fill(null);
    for (const [t, v] of s.values) {
      const i = Math.round((t - grid.start) / grid.step);
      const x = parseFloat(v);
      if (i >= 0 && i < n && Number.isFinite(x)) {
        col[i] = x;
        points++;
      }
    }
    return col;
  });
  el.dataset.points = String(points);
  if (points === 0) {
    el.dataset.state = 'empty';
    el.append(empty('No data in this range.'));
    return null;
  }
  const opts = {
    width: el.clientWidth || 600,
    height: HEIGHT,
    series: [
      {},
      ...sorted.map((s, i) => ({
        label: label(s.metric),
        stroke: COLORS[i % COLORS.length],
        width: 1.5,
        value: (u, v) => (v === null || v === undefined ? '–' : fmt(v)),
      })),
    ],
    axes: [
      { stroke: '#5b6472', grid: { stroke: '#edf0f3' }, ticks: { stroke: '#edf0f3' } },
      {
        stroke: '#5b6472',
        grid: { stroke: '#edf0f3' },
        ticks: { stroke: '#edf0f3' },
        size: 76,
        values: (u, splits) => splits.map(fmt),
      },
    ],
    scales: { y: { range: (u, min, max) => [Math.min(0, min), max > 0 ? max * 1.1 : 1] } },
    legend: { live: true },
  };
  const u = new uPlot(opts, [xs, ...ys], el);
  live.add(u);
  el.dataset.state = 'ready';
  return u;
}

/** A placeholder for a chart, to be drawn into once its query answers. */
export function chartBox() {
  return h('div', { class: 'chart', 'data-state': 'loading' }, empty('Loading…'));
}
