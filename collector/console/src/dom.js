// Small DOM and formatting helpers. Text from the API is always set as text, never as HTML.

/**
 * An element with attributes (`class`, `data-*`, listeners for `on*`, `style` as an object
 * set through the CSSOM, which the page's Content-Security-Policy allows) and children.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'style') Object.assign(el.style, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** A card with a heading and a body to fill later. */
export function card(title, ...body) {
  return h('section', { class: 'card' }, h('h2', {}, title), ...body);
}

/** A table with a header row; `rows` are arrays of cells (text or nodes). */
export function table(headers, rows, { numeric = [] } = {}) {
  const cls = (i) => (numeric.includes(i) ? 'num' : undefined);
  return h(
    'table',
    { class: 'grid' },
    h('thead', {}, h('tr', {}, headers.map((t, i) => h('th', { class: cls(i) }, t)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, r.map((c, i) => h('td', { class: cls(i) }, c))))),
  );
}

/** An error box with the API's error type and message. */
export function errorBox(e) {
  const type = e && e.type ? `${e.type}: ` : '';
  return h('div', { class: 'error', role: 'alert' }, type + (e && e.message ? e.message : String(e)));
}

export function empty(text) {
  return h('p', { class: 'empty' }, text);
}

const SI = ['', 'k', 'M', 'G', 'T', 'P'];

/** 1234 -> "1.23k"; small numbers keep up to two decimals. */
export function fmtNumber(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  let i = 0;
  let x = Math.abs(v);
  while (x >= 1000 && i < SI.length - 1) {
    x /= 1000;
    i++;
  }
  const digits = x >= 100 || (i === 0 && Number.isInteger(x)) ? 0 : x >= 10 ? 1 : 2;
  return `${v < 0 ? '-' : ''}${x.toFixed(digits)}${SI[i]}`;
}

/** Bytes in SI units: 1234 -> "1.23 kB". */
export function fmtBytes(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  const n = fmtNumber(v);
  return /[kMGTP]$/.test(n) ? `${n.slice(0, -1)} ${n.slice(-1)}B` : `${n} B`;
}

/** A duration in seconds as "42 s", "3 min", "2 h 5 min", "3 d". */
export function fmtAge(s) {
  if (s === null || s === undefined) return '–';
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.round(s / 86400)} d`;
}

/** An RFC 3339 time as local date and time. */
export function fmtTime(rfc3339) {
  if (!rfc3339) return '–';
  const d = new Date(rfc3339);
  return Number.isNaN(d.getTime()) ? rfc3339 : d.toLocaleString();
}

/** The value of a sample `[t, "v"]` as a number. */
export function sampleValue(sample) {
  return sample ? parseFloat(sample[1]) : NaN;
}
