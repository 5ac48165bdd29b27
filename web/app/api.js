// The dashboard's only way to the server: the documented JSON API, with the signed-in session
// (access and refresh tokens in localStorage) refreshed silently before it lapses.
const KEY = 'companero:session';

let session = JSON.parse(localStorage.getItem(KEY) || 'null');
let refreshing = null;

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** Words a person can act on, for every error the API can give. */
export function explain(error) {
  if (!(error instanceof ApiError)) return 'The server could not be reached. Check your connection and try again.';
  if (error.code === 'rate_limited') return `${error.message} (try again in ${error.retryAfter || 'a few'} s)`;
  return error.message || `Something went wrong (HTTP ${error.status}).`;
}

function save(next) {
  session = next;
  if (next) localStorage.setItem(KEY, JSON.stringify(next));
  else localStorage.removeItem(KEY);
}

export function signedIn() {
  return Boolean(session);
}

export function accessToken() {
  return session && session.access_token;
}

function store(tokens) {
  save({ ...tokens, expires_at: Date.now() + tokens.expires_in * 1000 });
}

async function refresh() {
  if (!session) throw new ApiError(401, 'unauthorized', 'Please sign in.');
  if (!refreshing) {
    refreshing = raw('POST', '/api/v1/auth/refresh', { refresh_token: session.refresh_token })
      .then(store)
      .catch((error) => { save(null); throw error; })
      .finally(() => { refreshing = null; });
  }
  return refreshing;
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
      response.headers.get('retry-after'));
  }
  return data;
}

/** A signed-in call; refreshes the access token first when it is about to lapse. */
export async function api(method, path, body) {
  if (session && session.expires_at - Date.now() < 30_000) await refresh();
  try {
    return await raw(method, path, body, accessToken());
  } catch (error) {
    if (error.status === 401 && session && error.code !== 'invalid_credentials') {
      await refresh();
      return raw(method, path, body, accessToken());
    }
    throw error;
  }
}

export const get = (path) => api('GET', path);

export async function signIn(email, password) {
  store(await raw('POST', '/api/v1/auth/login', { email, password }));
}

export async function signUp(fields) {
  store(await raw('POST', '/api/v1/auth/register', fields));
}

export async function signOut(everywhere = false) {
  const token = session && session.refresh_token;
  save(null);
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
