// Building PromQL from what the user picked. Label values are quoted as PromQL string
// literals (backslash, double quote and newline escaped), so a node name cannot end the
// string or inject matchers.

/** `v` as a PromQL double-quoted string literal. */
export function quote(v) {
  return '"' + String(v).replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n') + '"';
}

/** `v` as a regular expression (RE2) that matches exactly `v`. */
export function regexEscape(v) {
  return String(v).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * A label matcher list `{...}` with `more` (already valid matchers) and, when a node is
 * picked, `node_name="<node>"`; empty when there is nothing to match.
 */
export function matchers(node, ...more) {
  const m = more.filter(Boolean);
  if (node) m.push(`node_name=${quote(node)}`);
  return m.length ? `{${m.join(',')}}` : '';
}

/**
 * The query box's `$node`: the picked node as an escaped regular expression inside a
 * PromQL string body (`.*` for all nodes), for `node_name=~"$node"` as in Grafana.
 */
export function expandNode(query, node) {
  const re = node ? regexEscape(node) : '.*';
  const body = quote(re).slice(1, -1);
  return query.replace(/\$node\b/g, () => body);
}

/** Seconds of each range the range picker offers. */
export const RANGES = { '15m': 900, '1h': 3600, '6h': 21600, '24h': 86400 };

const STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];

/** A step (seconds) that gives about one point per two pixels of a chart `width` wide. */
export function stepFor(rangeSeconds, width) {
  const raw = rangeSeconds / Math.max(50, Math.floor(width / 2));
  return STEPS.find((s) => s >= raw) ?? STEPS[STEPS.length - 1];
}

/**
 * The window of rate() for a step: at least four steps, and at least a minute so that it
 * holds two samples of shippers pushing every 10 s (the default) with room for a late one.
 */
export function rateWindow(step) {
  return `${Math.max(4 * step, 60)}s`;
}
