// The cluster (or the picked node) at a glance: current rates and their history.

import { get } from '../api.js';
import { fmtAge } from '../dom.js';
import { matchers } from '../promql.js';
import { UNITS } from '../chart.js';
import { chartCard, tiles } from './common.js';

/** A shipper that pushed within this many seconds counts as reporting. */
export const FRESH_SECONDS = 60;

export default function overview(ctx) {
  const sel = (...more) => matchers(ctx.node, ...more);
  tiles(ctx, [
    {
      label: ctx.node ? 'Last push' : 'Nodes reporting',
      note: ctx.node ? ctx.node : `pushed in the last ${FRESH_SECONDS} s`,
      value: async () => {
        const all = await get('api/v1/kappie/shippers');
        const mine = ctx.node ? all.filter((s) => s.nodeName === ctx.node) : all;
        if (ctx.node) {
          const ages = mine.map((s) => s.lastPushAgeSeconds).filter((a) => a !== null);
          return ages.length ? `${fmtAge(Math.min(...ages))} ago` : 'never';
        }
        const nodes = new Set(mine.map((s) => s.nodeName));
        const fresh = new Set(
          mine.filter((s) => s.lastPushAgeSeconds !== null && s.lastPushAgeSeconds < FRESH_SECONDS)
            .map((s) => s.nodeName),
        );
        return `${fresh.size} / ${nodes.size}`;
      },
    },
    {
      label: 'Forwarded',
      note: 'bytes/s, last minute',
      query: `sum(rate(kappie_forward_bytes${sel()}[1m]))`,
      format: UNITS.bytesPerSecond,
    },
    {
      label: 'Packets',
      note: 'packets/s, last minute',
      query: `sum(rate(kappie_forward_count${sel()}[1m]))`,
      format: UNITS.perSecond,
    },
    {
      label: 'Drops',
      note: 'packets/s, last minute',
      query: `sum(rate(kappie_drop_count${sel()}[1m]))`,
      format: UNITS.perSecond,
    },
  ]);
  const byDirection = (m) => m.direction || '(none)';
  chartCard(
    ctx,
    'Forwarded bytes/s by direction',
    (w) => `sum by (direction) (rate(kappie_forward_bytes${sel()}[${w}]))`,
    { label: byDirection, unit: 'bytesPerSecond' },
  );
  chartCard(
    ctx,
    'Forwarded packets/s by direction',
    (w) => `sum by (direction) (rate(kappie_forward_count${sel()}[${w}]))`,
    { label: byDirection, unit: 'perSecond' },
  );
  chartCard(
    ctx,
    'Drops/s by direction',
    (w) => `sum by (direction) (rate(kappie_drop_count${sel()}[${w}]))`,
    { label: byDirection, unit: 'perSecond' },
  );
  chartCard(
    ctx,
    'Interface drops and errors/s',
    (w) =>
      `sum by (statistic_name) (rate(kappie_interface_stats${sel(
        'statistic_name=~"rx_dropped|tx_dropped|rx_errors|tx_errors"',
      )}[${w}]))`,
    { label: (m) => m.statistic_name, unit: 'perSecond' },
  );
}
