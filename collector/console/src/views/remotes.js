// The remote addresses and ports with the most TCP connections (kappie_tcp_connection_remote:
// each shipper reports its top N and one address="other" series for the rest).

import { instant } from '../api.js';
import { card, empty, errorBox, fmtNumber, h, table } from '../dom.js';
import { matchers } from '../promql.js';
import { chartCard } from './common.js';

const TOP = 10;

export default function remotes(ctx) {
  const top = `topk(${TOP}, sum by (address, port) (kappie_tcp_connection_remote${matchers(
    ctx.node,
    'address!="other"',
  )}))`;
  const body = h('div', { class: 'table-box', 'data-state': 'loading' }, empty('Loading…'));
  ctx.page.append(card(`Top ${TOP} remotes by connections now`, body));
  ctx.task(async () => {
    try {
      const [res, other] = await Promise.all([
        instant(top, ctx.now),
        instant(`sum(kappie_tcp_connection_remote${matchers(ctx.node, 'address="other"')})`, ctx.now),
      ]);
      const rows = res
        .map((s) => ({ address: s.metric.address, port: s.metric.port, n: parseFloat(s.value[1]) }))
        .sort((a, b) => b.n - a.n);
      const max = Math.max(1, ...rows.map((r) => r.n));
      const otherN = other.length ? parseFloat(other[0].value[1]) : 0;
      body.dataset.state = 'ready';
      body.replaceChildren(
        rows.length
          ? table(
              ['Remote address', 'Port', 'Connections', ''],
              rows.map((r) => [
                h('code', { class: 'remote' }, r.address),
                r.port,
                fmtNumber(r.n),
                h('div', { class: 'bar' }, h('span', { style: { width: `${(100 * r.n) / max}%` } })),
              ]),
              { numeric: [1, 2] },
            )
          : empty('No remote TCP connections reported.'),
        otherN > 0 ? h('p', { class: 'dim' }, `${fmtNumber(otherN)} more connections to other remotes.`) : null,
      );
    } catch (e) {
      body.dataset.state = 'error';
      body.replaceChildren(errorBox(e));
    }
  });
  chartCard(ctx, `Top ${TOP} remotes over time`, () => top, {
    label: (m) => (m.address && m.address.includes(':') ? `[${m.address}]:${m.port}` : `${m.address}:${m.port}`),
    unit: 'number',
    wide: true,
  });
}
