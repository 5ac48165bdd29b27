// The chat page as an installed app: its shell (the page, the widget script, the icon) is kept
// so the app opens without a network, and shows the page's own "reconnecting" state. Every
// API call goes to the network: conversations are never cached on the device.
const CACHE = 'companero-chat-v2';
const SHELL = ['/widget.js', '/favicon.svg'];

// The scope is the chat page's own address (`/c/<slug>`): it is kept with the shell.
self.addEventListener('install', (event) => {
  const page = new URL(self.registration.scope).pathname;
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll([page, ...SHELL])).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((key) => key !== CACHE).map((key) => caches.delete(key))))
    .then(() => self.clients.claim()));
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== self.location.origin || url.pathname.startsWith('/api/')) return;
  const shell = event.request.mode === 'navigate' || SHELL.includes(url.pathname) || url.pathname.endsWith('/manifest.webmanifest');
  if (!shell) return;
  // The network first, so an update shows at once; the kept copy when offline.
  event.respondWith(fetch(event.request)
    .then((response) => {
      if (response.ok) {
        const copy = response.clone();
        caches.open(CACHE).then((cache) => cache.put(event.request, copy));
      }
      return response;
    })
    .catch(() => caches.match(event.request).then((kept) => kept || Response.error())));
});

// Web Push: a staff reply or a check-in while the page is closed becomes a notification. When
// the chat page is on screen it shows the message itself, so nothing is shown twice.
self.addEventListener('push', (event) => {
  let data = {};
  try { data = event.data ? event.data.json() : {}; } catch (_) { data = { body: event.data.text() }; }
  const scope = new URL(self.registration.scope).pathname;
  event.waitUntil(self.clients.matchAll({ type: 'window', includeUncontrolled: true }).then((windows) => {
    const onScreen = windows.some((w) => w.visibilityState === 'visible' && new URL(w.url).pathname.startsWith(scope));
    if (onScreen) return undefined;
    return self.registration.showNotification(data.title || 'New message', {
      body: data.body || '',
      icon: data.icon,
      // One notification per conversation; a newer message replaces it and still alerts.
      tag: data.tag || scope,
      renotify: Boolean(data.tag),
      data: { url: data.url || scope },
    });
  }));
});

// Opening a notification brings the chat page forward, or opens it.
self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const target = new URL((event.notification.data && event.notification.data.url) || self.registration.scope, self.location.origin);
  event.waitUntil(self.clients.matchAll({ type: 'window', includeUncontrolled: true }).then((windows) => {
    const open = windows.find((w) => new URL(w.url).pathname === target.pathname);
    return open ? open.focus() : self.clients.openWindow(target.href);
  }));
});
