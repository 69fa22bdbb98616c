// A PromQL box: the expression is run as a range query over the picked range and drawn, or
// the API's error (Prometheus's errorType and error) is shown.

import { range } from '../api.js';
import { chartBox, drawChart } from '../chart.js';
import { card, empty, errorBox, h } from '../dom.js';
import { expandNode, rateWindow } from '../promql.js';
import { grid } from './common.js';

/** Series drawn at most; a legend of hundreds helps nobody. */
const MAX_SERIES = 50;

const EXAMPLE = 'sum by (reason) (rate(kappie_drop_count{node_name=~"$node"}[$__rate_interval]))';

export default function query(ctx) {
  const input = h('textarea', {
    id: 'promql',
    rows: 3,
    spellcheck: 'false',
    autocomplete: 'off',
    'aria-label': 'PromQL expression',
    placeholder: EXAMPLE,
  });
  input.value = ctx.q;
  const form = h(
    'form',
    {
      class: 'query-form',
      onsubmit: (e) => {
        e.preventDefault();
        ctx.setQuery(input.value.trim());
      },
    },
    input,
    h(
      'div',
      { class: 'row' },
      h('button', { type: 'submit', class: 'primary', id: 'run' }, 'Run'),
      h(
        'p',
        { class: 'hint' },
        'Ctrl+Enter runs it over the picked range. ',
        h('code', {}, '$node'),
        ' is the picked node as a regular expression (',
        h('code', {}, 'node_name=~"$node"'),
        '), ',
        h('code', {}, '$__rate_interval'),
        ' a rate window that fits the step.',
      ),
    ),
  );
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  ctx.page.append(card('PromQL', form));
  if (!ctx.q) {
    ctx.page.append(empty(`Try: ${EXAMPLE}`));
    return;
  }
  const box = chartBox();
  const info = h('p', { class: 'dim', id: 'query-info' });
  ctx.page.append(card('Graph', info, box));
  ctx.task(async () => {
    const g = grid(ctx, box.clientWidth || ctx.page.clientWidth);
    const q = expandNode(ctx.q, ctx.node).replace(/\$__rate_interval\b/g, rateWindow(g.step));
    try {
      const m = await range(q, g.start, g.end, g.step);
      info.textContent =
        `${m.length} series, step ${g.step} s` +
        (m.length > MAX_SERIES ? `; the first ${MAX_SERIES} are drawn` : '');
      if (ctx.current()) drawChart(box, m.slice(0, MAX_SERIES), g);
    } catch (e) {
      box.dataset.state = 'error';
      box.replaceChildren(errorBox(e));
    }
  });
}
