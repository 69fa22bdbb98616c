// Drops by the kernel's (or Cilium's, or HNS's) reason: a chart of their rate and a table
// of how many packets and bytes each reason dropped in the range.

import { instant } from '../api.js';
import { card, empty, errorBox, fmtBytes, fmtNumber, h, table } from '../dom.js';
import { matchers } from '../promql.js';
import { UNITS } from '../chart.js';
import { chartCard } from './common.js';

export default function drops(ctx) {
  const sel = matchers(ctx.node);
  chartCard(
    ctx,
    'Drops/s by reason',
    (w) => `sum by (reason) (rate(kappie_drop_count${sel}[${w}]))`,
    { label: (m) => m.reason || '(none)', unit: 'perSecond', wide: true },
  );
  const body = h('div', { class: 'table-box', 'data-state': 'loading' }, empty('Loading…'));
  ctx.page.append(card(`Drops by reason in the last ${ctx.range}`, body));
  ctx.task(async () => {
    const r = `${ctx.rangeSeconds}s`;
    const by = 'sum by (reason, direction)';
    try {
      const [packets, bytes, now] = await Promise.all([
        instant(`${by} (increase(kappie_drop_count${sel}[${r}]))`, ctx.now),
        instant(`${by} (increase(kappie_drop_bytes${sel}[${r}]))`, ctx.now),
        instant(`${by} (rate(kappie_drop_count${sel}[1m]))`, ctx.now),
      ]);
      const key = (m) => `${m.reason}\u0000${m.direction}`;
      const rows = new Map();
      const row = (m) => {
        if (!rows.has(key(m))) {
          rows.set(key(m), { reason: m.reason || '(none)', direction: m.direction || '', packets: 0, bytes: 0, rate: 0 });
        }
        return rows.get(key(m));
      };
      for (const s of packets) row(s.metric).packets = parseFloat(s.value[1]);
      for (const s of bytes) row(s.metric).bytes = parseFloat(s.value[1]);
      for (const s of now) row(s.metric).rate = parseFloat(s.value[1]);
      const sorted = [...rows.values()].sort((a, b) => b.packets - a.packets || b.rate - a.rate);
      body.dataset.state = 'ready';
      body.replaceChildren(
        sorted.length
          ? table(
              ['Reason', 'Direction', 'Packets', 'Bytes', 'Now'],
              sorted.map((x) => [
                h('code', {}, x.reason),
                x.direction,
                fmtNumber(Math.round(x.packets)),
                fmtBytes(Math.round(x.bytes)),
                UNITS.perSecond(x.rate),
              ]),
              { numeric: [2, 3, 4] },
            )
          : empty('No drops in this range.'),
      );
    } catch (e) {
      body.dataset.state = 'error';
      body.replaceChildren(errorBox(e));
    }
  });
}
