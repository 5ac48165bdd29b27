// The dashboard's only way to the server: the documented JSON API, with the signed-in session
// (access and refresh tokens) refreshed silently before it lapses.
//
// Every tab of the dashboard shares one session. Each refresh rotates the refresh token, and the
// server takes a rotated token used again for a stolen one (it ends the whole sign-in), so tabs
// that refreshed on their own would sign each other out. Instead the session lives in
// localStorage, a refresh runs in one tab at a time (a Web Lock; inside it a tab first looks
// whether another one has refreshed meanwhile and then uses those tokens), and new tokens and
// sign-outs are told to the other tabs (a BroadcastChannel, or storage events where there is none).
const KEY = 'companero:session';
const LOCK = 'companero-refresh';
const channel = typeof BroadcastChannel === 'function' ? new BroadcastChannel('companero-session') : null;

/** The session in localStorage: null when there is none, undefined when storage is unavailable. */
function load() {
  try { return JSON.parse(localStorage.getItem(KEY) || 'null'); } catch { return undefined; }
}

let session = load() || null;
let refreshing = null;
const listeners = new Set();

export class ApiError extends Error {
  /** `details`: the whole error object (a sign-in's second step reads its `challenge`). */
  constructor(status, code, message, retryAfter, details = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.details = details;
  }
}

/** Words a person can act on, for every error the API can give. */
export function explain(error) {
  if (!(error instanceof ApiError)) return 'The server could not be reached. Check your connection and try again.';
  if (error.code === 'rate_limited') return `${error.message} (try again in ${error.retryAfter || 'a few'} s)`;
  return error.message || `Something went wrong (HTTP ${error.status}).`;
}

/** Calls `listener(change, here)` when the session changes under this tab: `'signed-in'` or
 * `'signed-out'` in another tab (`here` false), or `'signed-out'` because this tab could not
 * refresh it (`here` true). A tab's own sign-in and sign-out are not told to itself. */
export function onSessionChange(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function tell(change, here) {
  for (const listener of listeners) listener(change, here);
}

/** Keeps `next` in this tab and in storage, and tells the other tabs (`change`: 'signed-in',
 * 'refreshed' or 'signed-out'). */
function save(next, change) {
  session = next;
  try {
    if (next) localStorage.setItem(KEY, JSON.stringify(next));
    else localStorage.removeItem(KEY);
  } catch { /* storage unavailable: this tab only */ }
  if (channel) channel.postMessage({ change, session: next });
}

const savedAt = (s) => (s && s.saved_at) || 0;
/** The later of two sessions (what this tab holds, what storage holds). */
const newest = (a, b) => (!a ? b || null : !b ? a : savedAt(b) > savedAt(a) ? b : a);

/** A session another tab saved. */
function adopt(next, change) {
  if (change === 'refreshed' && next && session && savedAt(next) < savedAt(session)) return;
  const had = Boolean(session);
  session = next;
  if (!next && had) tell('signed-out', false);
  else if (next && (!had || change === 'signed-in')) tell('signed-in', false);
}

if (channel) {
  channel.addEventListener('message', (event) => adopt(event.data.session, event.data.change));
} else {
  window.addEventListener('storage', (event) => {
    if (event.key !== KEY && event.key !== null) return;
    let next = null;
    try { next = JSON.parse(event.newValue || 'null'); } catch { /* not ours */ }
    adopt(next, !next ? 'signed-out' : event.oldValue ? 'refreshed' : 'signed-in');
  });
}

export function signedIn() {
  return Boolean(session);
}

export function accessToken() {
  return session && session.access_token;
}

function store(tokens, change) {
  save({ ...tokens, expires_at: Date.now() + tokens.expires_in * 1000, saved_at: Date.now() }, change);
}

/** Renews the access token, in one tab at a time: concurrent calls share one renewal. */
export function refresh() {
  if (!refreshing) {
    const seen = session;
    const asked = performance.now();
    const renew = () => renewUnlessRenewed(seen, performance.now() - asked > LOCK_WAITED_MS);
    refreshing = (navigator.locks ? navigator.locks.request(LOCK, renew) : renew())
      .finally(() => { refreshing = null; });
  }
  return refreshing;
}

/** A lock granted later than this was held by another tab, which may have renewed. */
const LOCK_WAITED_MS = 5;
/** How long a tab that waited for the lock waits for the other tab's renewal to reach it:
 * another tab's localStorage write reaches this one a moment later (Chromium keeps each tab's
 * copy in its own process), and renewing the same refresh token twice ends the sign-in. */
const STORAGE_SETTLE_MS = 150;

function storedSessionSoon(seen) {
  return new Promise((resolve) => {
    const done = () => { window.removeEventListener('storage', changed); clearTimeout(timer); resolve(load()); };
    const changed = (event) => { if (event.key === KEY) done(); };
    const timer = setTimeout(done, STORAGE_SETTLE_MS);
    window.addEventListener('storage', changed);
    const now = load();
    if (now && seen && now.refresh_token !== seen.refresh_token) done();
  });
}

/** Runs holding the lock. `seen` is the session that needed renewing; when another tab has
 * replaced it meanwhile, its session is used instead of renewing again. `waited`: the lock
 * was held by another tab first. */
async function renewUnlessRenewed(seen, waited) {
  let latest = newest(session, load());
  if (waited && latest && seen && latest.refresh_token === seen.refresh_token) {
    latest = newest(session, await storedSessionSoon(seen));
  }
  if (!latest) throw new ApiError(401, 'unauthorized', 'Please sign in.');
  if (!seen || latest.refresh_token !== seen.refresh_token) { session = latest; return; }
  try {
    store(await raw('POST', '/api/v1/auth/refresh', { refresh_token: latest.refresh_token }), 'refreshed');
  } catch (error) {
    const now = newest(session, load());
    if (now && now.refresh_token !== latest.refresh_token) { session = now; return; }
    // Refused (not merely unreachable): the sign-in is over.
    if (error instanceof ApiError && error.status >= 400 && error.status < 500 && error.status !== 429) {
      save(null, 'signed-out');
      tell('signed-out', true);
    }
    throw error;
  }
}

async function raw(method, path, body, token) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined && !(body instanceof FormData)) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : body instanceof FormData ? body : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    throw new ApiError(response.status, error.code || 'http_error', error.message || `HTTP ${response.status}`,
      response.headers.get('retry-after'), error);
  }
  return data;
}

/** A signed-in call; refreshes the access token first when it is about to lapse. */
export async function api(method, path, body) {
  if (session && session.expires_at - Date.now() < 30_000) await refresh();
  const used = accessToken();
  try {
    return await raw(method, path, body, used);
  } catch (error) {
    if (error.status === 401 && session && error.code !== 'invalid_credentials') {
      // Another tab may have refreshed already: then its token is tried, without a refresh.
      if (accessToken() === used) await refresh();
      return raw(method, path, body, accessToken());
    }
    throw error;
  }
}

export const get = (path) => api('GET', path);

export async function signIn(email, password) {
  store(await raw('POST', '/api/v1/auth/login', { email, password }), 'signed-in');
}

/** A sign-in's second step: the challenge of `mfa_required` (or `mfa_enrollment_required`) with
 * `{code}` or `{recovery_code}`. Answers the session (after an enrolment it carries the
 * recovery codes, shown once). */
export async function signInSecondStep(challenge, factor) {
  const tokens = await raw('POST', '/api/v1/auth/login/mfa', { challenge, ...factor });
  const { recovery_codes: codes, ...session } = tokens;
  store(session, 'signed-in');
  return codes || null;
}

export async function signUp(fields) {
  store(await raw('POST', '/api/v1/auth/register', fields), 'signed-in');
}

export async function signOut(everywhere = false) {
  const token = session && session.refresh_token;
  save(null, 'signed-out');
  if (token) await raw('POST', '/api/v1/auth/logout', { refresh_token: token, everywhere }).catch(() => {});
}

export function publicGet(path) {
  return raw('GET', path);
}

export function publicPost(path, body) {
  return raw('POST', path, body);
}

/** Uploads one file with progress (fetch cannot report upload progress; XHR can); `fields` adds
 * form fields such as `title` and `collection`. */
export function upload(file, onProgress, fields = {}) {
  return new Promise((resolve, reject) => {
    const send = () => {
      const xhr = new XMLHttpRequest();
      xhr.open('POST', '/api/v1/documents');
      xhr.setRequestHeader('Authorization', `Bearer ${accessToken()}`);
      xhr.upload.onprogress = (event) => { if (event.lengthComputable) onProgress(event.loaded / event.total); };
      xhr.onload = () => {
        let data = null;
        try { data = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
        if (xhr.status >= 200 && xhr.status < 300) resolve(data);
        else {
          const error = (data && data.error) || {};
          reject(new ApiError(xhr.status, error.code, error.message || `HTTP ${xhr.status}`));
        }
      };
      xhr.onerror = () => reject(new TypeError('network'));
      const form = new FormData();
      for (const [name, value] of Object.entries(fields)) form.append(name, value);
      form.append('file', file, file.name);
      xhr.send(form);
    };
    const ready = session && session.expires_at - Date.now() < 30_000 ? refresh() : Promise.resolve();
    ready.then(send, reject);
  });
}
