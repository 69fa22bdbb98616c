// The collector's Prometheus API, by relative URLs (`api/v1/...`): the console works through
// `kubectl port-forward` and under any path prefix.
//
// Authentication: with basic auth (--http-auth-users-file) the collector answers 401 with
// `WWW-Authenticate: Basic`, the browser asks for user and password once and then sends
// them with every request. With only a bearer token (--http-auth-token-file) the browser
// cannot ask; the console then shows a form and sends the token from sessionStorage (this
// tab only) as `Authorization: Bearer`.

const TOKEN_KEY = 'kappie.bearerToken';

/** An error of the API in Prometheus's shape (`errorType`, `error`), or of the transport. */
export class ApiError extends Error {
  constructor(type, message, status) {
    super(message);
    this.type = type;
    this.status = status;
  }
}

let onUnauthorized = () => {};

/** Sets what happens when the collector answers 401. */
export function setUnauthorizedHandler(f) {
  onUnauthorized = f;
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function hasToken() {
  return !!sessionStorage.getItem(TOKEN_KEY);
}

async function call(path, init) {
  const headers = { Accept: 'application/json', ...(init.headers || {}) };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  let resp;
  try {
    resp = await fetch(path, { ...init, headers, credentials: 'same-origin' });
  } catch (e) {
    throw new ApiError('unreachable', `cannot reach the collector (${e.message})`, 0);
  }
  if (resp.status === 401) {
    onUnauthorized(resp.headers.get('WWW-Authenticate') || '');
  }
  let body;
  try {
    body = await resp.json();
  } catch {
    throw new ApiError('bad_response', `HTTP ${resp.status} without a JSON body`, resp.status);
  }
  if (body.status !== 'success') {
    throw new ApiError(body.errorType || 'error', body.error || `HTTP ${resp.status}`, resp.status);
  }
  return body.data;
}

/** GET `path` (relative) with query parameters. */
export function get(path, params = {}) {
  const qs = new URLSearchParams(params).toString();
  return call(qs ? `${path}?${qs}` : path, { method: 'GET' });
}

/** POST `path` with a form body, as Prometheus's own UI sends queries (no URL length limit). */
export function post(path, params) {
  return call(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(params).toString(),
  });
}

/** An instant query at `time` (seconds); the result vector. */
export async function instant(query, time) {
  const data = await post('api/v1/query', { query, time: String(time) });
  return data.result;
}

/** A range query; the result matrix. */
export async function range(query, start, end, step) {
  const data = await post('api/v1/query_range', {
    query,
    start: String(start),
    end: String(end),
    step: String(step),
  });
  if (data.resultType === 'matrix') return data.result;
  // A scalar or string cannot come back from a range query in Prometheus; be lenient anyway.
  return [];
}
