/*! Kappie web console. Bundles uPlot 1.6.32 (https://github.com/leeoniya/uPlot):
 *
 * The MIT License (MIT)
 *
 * Copyright (c) 2022 Leon Sorokin
 *
 * Permission is hereby granted, free of charge, to any person obtaining a copy
 * of this software and associated documentation files (the "Software"), to deal
 * in the Software without restriction, including without limitation the rights
 * to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
 * copies of the Software, and to permit persons to whom the Software is
 * furnished to do so, subject to the following conditions:
 *
 * The above copyright notice and this permission notice shall be included in
 * all copies or substantial portions of the Software.
 *
 * THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 * IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 * FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 * AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 * LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 * OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN
 * THE SOFTWARE.
 */

// The console's shell: the view, node and range picked (kept in the URL's fragment, so a
// view can be linked and reloaded), the pickers, sign-in, and refreshing.

import 'uplot/dist/uPlot.min.css';
import './style.css';
import * as api from './api.js';
import { destroyCharts } from './chart.js';
import { errorBox, h } from './dom.js';
import { RANGES } from './promql.js';
import drops from './views/drops.js';
import nodes from './views/nodes.js';
import overview from './views/overview.js';
import query from './views/query.js';
import remotes from './views/remotes.js';

const VIEWS = { overview, drops, nodes, remotes, query };
const DEFAULT_RANGE = '1h';
/** Views other than the query box are redrawn this often while the tab is visible. */
const REFRESH_MS = 30_000;

const $ = (id) => document.getElementById(id);

/** `#<view>?node=..&range=..&q=..` */
function readHash() {
  const [view, qs] = location.hash.slice(1).split('?');
  const p = new URLSearchParams(qs || '');
  return {
    view: VIEWS[view] ? view : 'overview',
    node: p.get('node') || '',
    range: RANGES[p.get('range')] ? p.get('range') : DEFAULT_RANGE,
    q: p.get('q') || '',
  };
}

function hashOf(state) {
  const p = new URLSearchParams();
  if (state.node) p.set('node', state.node);
  if (state.range !== DEFAULT_RANGE) p.set('range', state.range);
  if (state.q && state.view === 'query') p.set('q', state.q);
  const qs = p.toString();
  return `#${state.view}${qs ? `?${qs}` : ''}`;
}

/** Goes to `state`; false when the URL is already there (no hashchange will follow). */
function go(state) {
  const hash = hashOf(state);
  if (location.hash === hash) return false;
  location.hash = hash;
  return true;
}

let generation = 0;
let shownView = null;
let version = '';

/**
 * Draws the view the URL names. A refresh of the view on screen (`quiet`) is drawn out of
 * sight and swapped in once complete, so the screen does not flicker; another view or
 * other picks show at once, with their placeholders.
 */
async function render({ quiet = false } = {}) {
  const state = readHash();
  const gen = ++generation;
  const main = $('view');
  const page = h('div', { class: 'page', 'data-view': state.view, 'data-state': 'loading' });
  const swap = quiet && shownView === state.view && main.querySelector('.page');
  if (swap) {
    page.classList.add('pending');
  } else {
    for (const old of main.querySelectorAll('.page')) destroyCharts(old);
    main.replaceChildren();
  }
  main.append(page);
  syncControls(state);
  const tasks = [];
  const ctx = {
    ...state,
    rangeSeconds: RANGES[state.range],
    now: Math.floor(Date.now() / 1000),
    page,
    current: () => gen === generation,
    task: (f) => tasks.push(f()),
    setQuery: (q) => go({ ...readHash(), q }) || render(),
  };
  try {
    VIEWS[state.view](ctx);
    await Promise.allSettled(tasks);
  } catch (e) {
    page.append(errorBox(e));
  }
  if (!ctx.current()) {
    destroyCharts(page);
    page.remove();
    return;
  }
  for (const old of main.querySelectorAll('.page')) {
    if (old !== page) {
      destroyCharts(old);
      old.remove();
    }
  }
  page.classList.remove('pending');
  page.dataset.state = 'ready';
  shownView = state.view;
  setStatus(`updated ${new Date().toLocaleTimeString()}`);
}

function syncControls(state) {
  for (const a of $('nav').querySelectorAll('a')) {
    const view = a.getAttribute('href').slice(1).split('?')[0];
    a.href = hashOf({ ...state, view });
    a.classList.toggle('active', view === state.view);
  }
  const sel = $('node');
  if (![...sel.options].some((o) => o.value === state.node)) {
    sel.append(h('option', { value: state.node }, state.node));
  }
  sel.value = state.node;
  $('range').value = state.range;
}

/** Fills the node picker from the node_name values of the last day. */
async function loadNodes() {
  const now = Math.floor(Date.now() / 1000);
  const values = await api.get('api/v1/label/node_name/values', {
    start: String(now - 86400),
    end: String(now),
  });
  const picked = readHash().node;
  const sel = $('node');
  sel.replaceChildren(
    h('option', { value: '' }, 'All nodes'),
    ...values.map((v) => h('option', { value: v }, v)),
  );
  if (picked && !values.includes(picked)) {
    sel.append(h('option', { value: picked }, `${picked} (no data)`));
  }
  sel.value = picked;
}

function setStatus(text) {
  const parts = [`Kappie ${version}`.trim(), text];
  const footer = $('status');
  footer.replaceChildren(parts.filter(Boolean).join(' · '));
  if (api.hasToken()) {
    footer.append(
      ' · ',
      h('a', { href: '#', onclick: (e) => { e.preventDefault(); api.setToken(''); location.reload(); } }, 'forget token'),
    );
  }
}

let signIn = null;

/**
 * The collector answered 401. With basic auth the browser has asked already (and the user
 * cancelled, or typed a wrong password); a bearer token can only come from this form.
 */
function showSignIn(challenge) {
  const refused = api.hasToken();
  api.setToken('');
  if (signIn) return;
  const basic = /^basic/i.test(challenge);
  const input = h('input', {
    type: 'password',
    id: 'token',
    autocomplete: 'off',
    placeholder: 'Bearer token',
    'aria-label': 'Bearer token',
  });
  const why = refused
    ? 'The collector refused the token. '
    : basic
      ? 'This collector asks for a user name and password (basic auth): your browser prompts for them; reload the page to be asked again. '
      : 'This collector asks for a bearer token (--http-auth-token-file). ';
  signIn = h(
    'section',
    { class: 'card signin', id: 'signin' },
    h('h2', {}, 'Sign in'),
    h('p', {}, why, 'A token entered here is kept in this browser tab only.'),
    h(
      'form',
      {
        onsubmit: (e) => {
          e.preventDefault();
          api.setToken(input.value.trim());
          signIn.remove();
          signIn = null;
          start();
        },
      },
      input,
      h('button', { type: 'submit', class: 'primary' }, 'Sign in'),
    ),
  );
  $('view').replaceChildren(signIn);
  shownView = null;
}

async function start() {
  try {
    version = (await api.get('api/v1/status/buildinfo')).kappieVersion || '';
  } catch (e) {
    if (e.status !== 401) $('view').replaceChildren(errorBox(e));
    return;
  }
  setStatus('');
  try {
    await loadNodes();
  } catch (e) {
    if (e.status === 401) return;
  }
  render();
}

function init() {
  api.setUnauthorizedHandler(showSignIn);
  addEventListener('hashchange', () => signIn || render());
  $('node').addEventListener('change', (e) => go({ ...readHash(), node: e.target.value }));
  $('range').addEventListener('change', (e) => go({ ...readHash(), range: e.target.value }));
  $('refresh').addEventListener('click', () => {
    if (signIn) return;
    loadNodes().catch(() => {});
    render({ quiet: true });
  });
  setInterval(() => {
    if (document.hidden || signIn || readHash().view === 'query') return;
    loadNodes().catch(() => {});
    render({ quiet: true });
  }, REFRESH_MS);
  start();
}

init();
