// Calls to the admin API and the session endpoint, relative to the console's own URL
// (so a path prefix in front of the router is kept). Changes carry the session's CSRF
// token; a 401 means the session has ended, and the app is told to sign in again.

let csrfToken = null;
let signedOut = () => {};

export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

export function setSession(token) {
  csrfToken = token;
}

export function onSignedOut(callback) {
  signedOut = callback;
}

export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET' && method !== 'HEAD' && csrfToken) {
    headers['X-CSRF-Token'] = csrfToken;
  }
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network_error', 'The router did not answer: ' + e.message);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (e) {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    const failure = new ApiError(response.status, error.type || 'error',
      error.message || `The router answered ${response.status}.`);
    if (response.status === 401 && path !== 'session') {
      signedOut(failure.message);
    }
    throw failure;
  }
  return data;
}

// A query string from an object (values already strings).
export function query(params) {
  return new URLSearchParams(params).toString();
}
