// The node shippers the collector knows (GET api/v1/kappie/shippers), with how long ago each
// last pushed, and each node's current traffic.

import { get, instant } from '../api.js';
import { card, empty, errorBox, fmtAge, fmtNumber, fmtTime, h, table } from '../dom.js';
import { matchers } from '../promql.js';
import { UNITS } from '../chart.js';
import { chartCard } from './common.js';
import { FRESH_SECONDS } from './overview.js';

/** A shipper silent this long is shown as stale. */
const STALE_SECONDS = 5 * 60;

function pushAge(age) {
  if (age === null || age === undefined) return h('span', { class: 'badge stale' }, 'never');
  const cls = age < FRESH_SECONDS ? 'ok' : age < STALE_SECONDS ? 'late' : 'stale';
  return h('span', { class: `badge ${cls}`, title: `${age.toFixed(1)} s` }, `${fmtAge(age)} ago`);
}

export default function nodes(ctx) {
  const body = h('div', { class: 'table-box', 'data-state': 'loading' }, empty('Loading…'));
  ctx.page.append(card('Nodes', body));
  ctx.task(async () => {
    const sel = matchers(ctx.node);
    try {
      const [shippers, fwd, drops] = await Promise.all([
        get('api/v1/kappie/shippers'),
        instant(`sum by (node_name) (rate(kappie_forward_bytes${sel}[1m]))`, ctx.now),
        instant(`sum by (node_name) (rate(kappie_drop_count${sel}[1m]))`, ctx.now),
      ]);
      const rate = (res) => new Map(res.map((s) => [s.metric.node_name, parseFloat(s.value[1])]));
      const [fwdBy, dropsBy] = [rate(fwd), rate(drops)];
      const list = shippers
        .filter((s) => !ctx.node || s.nodeName === ctx.node)
        .sort((a, b) => a.nodeName.localeCompare(b.nodeName) || a.shipperId.localeCompare(b.shipperId));
      const rows = list.map((s) => [
        h('strong', { class: 'node-name' }, s.nodeName),
        s.cluster,
        pushAge(s.lastPushAgeSeconds),
        fmtTime(s.sessionStart),
        s.version,
        fmtNumber(s.series),
        fmtNumber(s.samplesLastMinute),
        UNITS.bytesPerSecond(fwdBy.get(s.nodeName) ?? NaN),
        UNITS.perSecond(dropsBy.get(s.nodeName) ?? NaN),
        h('code', { class: 'dim' }, s.shipperId),
      ]);
      // Nodes with data but no shipper known here (pushed by remote write, say).
      const known = new Set(list.map((s) => s.nodeName));
      for (const n of [...new Set([...fwdBy.keys(), ...dropsBy.keys()])].sort()) {
        if (known.has(n) || n === undefined) continue;
        rows.push([
          h('strong', { class: 'node-name' }, n), '', h('span', { class: 'dim' }, 'no shipper'),
          '', '', '', '',
          UNITS.bytesPerSecond(fwdBy.get(n) ?? NaN), UNITS.perSecond(dropsBy.get(n) ?? NaN), '',
        ]);
      }
      body.dataset.state = 'ready';
      body.replaceChildren(
        rows.length
          ? table(
              ['Node', 'Cluster', 'Last push', 'Session start', 'Version', 'Series',
                'Samples/min', 'Forwarded', 'Drops', 'Shipper'],
              rows,
              { numeric: [5, 6, 7, 8] },
            )
          : empty('No node shipper has connected to this collector.'),
      );
    } catch (e) {
      body.dataset.state = 'error';
      body.replaceChildren(errorBox(e));
    }
  });
  chartCard(
    ctx,
    'Forwarded bytes/s by node',
    (w) => `sum by (node_name) (rate(kappie_forward_bytes${matchers(ctx.node)}[${w}]))`,
    { label: (m) => m.node_name || '(none)', unit: 'bytesPerSecond', wide: true },
  );
}
