// The chat page and the widget in headless Chromium, against a running server (started by
// tests/browser.rs with the real test models). Exits non-zero on the first failed check.
//
// Environment: COMPANERO_URL (server), COMPANERO_SLUG (coach), COMPANERO_TOKEN (the creator's
// access token), COMPANERO_SCREENSHOTS (a folder), CHROMIUM (default /usr/bin/chromium).
import http from 'node:http';
import path from 'node:path';
import { check, launch, step, until, watch } from './harness.mjs';

const base = process.env.COMPANERO_URL.replace(/\/$/, '');
const slug = process.env.COMPANERO_SLUG;
const token = process.env.COMPANERO_TOKEN;
const shots = process.env.COMPANERO_SCREENSHOTS;
const host = `companero-chat#companero-chat-${slug}`;
const ANSWER_MS = 120_000;

async function api(route, { method = 'GET', body } = {}) {
  const response = await fetch(base + route, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(`${method} ${route}: ${response.status} ${JSON.stringify(data)}`);
  return data;
}

/** A website on its own origin (another port) that embeds the widget, with hostile CSS. */
function website(title, attributes = '') {
  const page = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  * { font-size: 40px !important; color: red !important; font-family: serif !important; }
  div, section, button, form, textarea { display: none !important; }
  h1 { letter-spacing: 3px; }
</style></head>
<body><h1>${title}</h1><p>A creator's own website.</p>
<script src="${base}/widget.js" data-coach="${slug}" ${attributes} async></script></body></html>`;
  const server = http.createServer((request, response) => {
    response.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    response.end(page);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      resolve({ origin: `http://127.0.0.1:${server.address().port}`, close: () => server.close() });
    });
  });
}

const browser = await launch();
const problems = [];
async function open(viewport) {
  const context = await browser.newContext({ viewport });
  const page = watch(await context.newPage(), problems);
  return { context, page };
}
const desktop = { width: 1280, height: 820 };
const phone = { width: 375, height: 740 };

/** The chat is connected. (The host element has no box of its own: its UI is fixed-position.) */
function ready(page) {
  return page.waitForSelector(`${host}[data-state="ready"]`, { state: 'attached' });
}

try {
  const { context, page } = await open(desktop);

  await step('the chat page shows the checked answer of the model and its citation', async () => {
    await page.goto(`${base}/c/${slug}`);
    const coach = await api('/api/v1/coach');
    check((await page.title()) === coach.name, 'the page is named after the coach');
    await ready(page);
    await page.waitForSelector('text=Ask me about refunds or sleep.');
    const input = page.getByLabel('Your message');
    // End users see checked sentences as they come; nothing shown is taken back, so every
    // partial answer is the start of the final one.
    await page.evaluate(() => {
      const root = document.querySelector('companero-chat').shadowRoot;
      window.drafts = [];
      new MutationObserver(() => {
        const draft = root.querySelector('[data-role="draft"] .body');
        if (draft && draft.textContent && window.drafts.at(-1) !== draft.textContent) window.drafts.push(draft.textContent);
      }).observe(root, { childList: true, subtree: true, characterData: true });
    });
    await input.fill('How many days does it take to get a refund?');
    await input.press('Enter');
    await page.waitForSelector('.msg.assistant[data-role="assistant"]', { timeout: ANSWER_MS });
    const answer = await page.locator('.msg.assistant[data-role="assistant"]').innerText();
    const { drafts, final } = await page.evaluate(() => {
      const node = document.querySelector('companero-chat').shadowRoot.querySelector('.msg.assistant[data-role="assistant"] .body').cloneNode(true);
      node.querySelectorAll('.cite').forEach((cite) => cite.remove());
      return { drafts: window.drafts, final: node.textContent };
    });
    const squash = (text) => text.replace(/\s+/g, '');
    check(drafts.every((draft) => squash(final).startsWith(squash(draft))), `partial answers only grow: ${JSON.stringify({ drafts, final })}`);
    check(await page.locator('.msg.assistant[data-role="assistant"] .cite').count() > 0, `a cited answer: ${answer}`);
    const cite = page.locator('.msg.assistant[data-role="assistant"] .cite').first();
    await cite.click();
    const source = page.locator('.source').first();
    await source.waitFor();
    const text = await source.innerText();
    check(text.includes('Refund policy') && text.includes('14 days'), `the source is quoted: ${text}`);
    check(await cite.getAttribute('aria-expanded') === 'true', 'the citation says it is open');
    await page.screenshot({ path: path.join(shots, 'chat-page-desktop.png') });
  });

  await step('the chat page installs as an app and opens without a network', async () => {
    const coach = await api('/api/v1/coach');
    const href = await page.locator('link[rel="manifest"]').getAttribute('href');
    const manifest = await (await fetch(`${base}${href}`)).json();
    check(manifest.name === coach.name && manifest.start_url === `/c/${slug}` && manifest.display === 'standalone', `the manifest: ${JSON.stringify(manifest)}`);
    const icon = await fetch(`${base}${manifest.icons[0].src}`);
    check(icon.ok && icon.headers.get('content-type') === 'image/svg+xml' && (await icon.text()).includes(coach.brand_color), 'the icon carries the coach\'s colour');
    await page.waitForFunction(() => navigator.serviceWorker && navigator.serviceWorker.controller, null, { timeout: 15000 }).catch(async () => {
      await page.reload();
      await page.waitForFunction(() => navigator.serviceWorker.controller, null, { timeout: 15000 });
    });
    const before = problems.length;
    await context.setOffline(true);
    await page.reload();
    await page.waitForSelector('companero-chat', { state: 'attached' });
    check((await page.title()) === coach.name, 'offline, the kept page opens');
    await context.setOffline(false);
    await page.reload();
    await ready(page);
    // The failed connections while offline were provoked here; anything else is a problem.
    const provoked = problems.splice(before).filter((p) => !p.includes('ERR_INTERNET_DISCONNECTED'));
    problems.push(...provoked);
  });

  await step('a push becomes a notification while the chat page is closed', async () => {
    await context.grantPermissions(['notifications'], { origin: base });
    const bell = page.getByRole('button', { name: 'Notifications off' });
    await bell.waitFor();
    // This Chromium reaches no push service (and has none in a private context): the page
    // says why instead of failing quietly. tests/push.rs covers the server's half.
    const before = problems.length;
    await bell.click();
    const alert = page.locator('.alert');
    await until('the reason notifications are off', async () => (await alert.innerText()).includes('Notifications could not be turned on'));
    // Chromium logs why it has no push service here; that message was provoked on purpose.
    problems.push(...problems.splice(before).filter((p) => !p.includes('Push API')));
    check(await bell.getAttribute('aria-pressed') === 'false', 'still off');
    const cdp = await context.newCDPSession(page);
    const registered = new Promise((resolve) => cdp.on('ServiceWorker.workerRegistrationUpdated', ({ registrations }) => {
      const chat = registrations.find((r) => !r.isDeleted && new URL(r.scopeURL).pathname === `/c/${slug}`);
      if (chat) resolve(chat);
    }));
    await cdp.send('ServiceWorker.enable');
    const registration = await registered;
    // The page is closed (another page of the site is open): the push shows as a notification.
    await page.goto(`${base}/app/`);
    const coach = await api('/api/v1/coach');
    const data = { title: coach.name, body: 'Time for your evening check-in: how many minutes did you walk?', url: `/c/${slug}`, tag: 'conversation-1' };
    await cdp.send('ServiceWorker.deliverPushMessage', { origin: base, registrationId: registration.registrationId, data: JSON.stringify(data) });
    const shown = await until('the notification', async () => {
      const list = await page.evaluate(async (scope) => {
        const chat = await navigator.serviceWorker.getRegistration(scope);
        return chat ? (await chat.getNotifications()).map((n) => ({ title: n.title, body: n.body, tag: n.tag })) : [];
      }, `/c/${slug}`);
      return list.length ? list : null;
    });
    check(shown.length === 1 && shown[0].title === coach.name && shown[0].body === data.body && shown[0].tag === data.tag, `the notification: ${JSON.stringify(shown)}`);
    await cdp.detach();
    await page.goto(`${base}/c/${slug}`);
    await ready(page);
  });

  await step('a reload keeps the history', async () => {
    await page.reload();
    await ready(page);
    await page.waitForSelector('.msg.assistant[data-role="assistant"]');
    check(await page.locator('.msg.user').count() === 1, 'one question');
    check(await page.locator('.msg.assistant[data-role="assistant"]').count() === 1, 'one answer');
  });

  await step('after the first helpful answer the coach asks once whether it may check in', async () => {
    const card = page.locator('[data-role="consent"]');
    await card.waitFor();
    check((await card.innerText()).includes('May I check in with you'), 'the question in plain words');
    await card.getByRole('button', { name: 'Yes, please' }).click();
    await page.waitForSelector('[data-role="consent"]:has-text("Thank you")');
    const toggle = page.getByRole('button', { name: 'Check-ins on' });
    await toggle.waitFor();
    // Answered: a reload does not ask again, and the header keeps the choice.
    await page.reload();
    await ready(page);
    await page.waitForSelector('.msg.assistant[data-role="assistant"]');
    await page.getByRole('button', { name: 'Check-ins on' }).waitFor();
    check(await page.locator('[data-role="consent"]').count() === 0, 'asked once');
    await page.getByRole('button', { name: 'Check-ins on' }).click();
    await page.getByRole('button', { name: 'Check-ins off' }).waitFor();
    await page.getByRole('button', { name: 'Check-ins off' }).click();
    await page.getByRole('button', { name: 'Check-ins on' }).waitFor();
  });

  await step('handoff is visible on both sides', async () => {
    await page.getByRole('button', { name: 'Talk to a person' }).click();
    await page.waitForSelector('.event:has-text("talk to a person")');
    const inbox = await until('the request in the inbox', async () => {
      const list = await api('/api/v1/inbox?filter=needs_human');
      return list.conversations[0];
    });
    const id = inbox.conversation.id;
    check(inbox.visitor_online === true, 'the inbox shows the end user online');
    await api(`/api/v1/conversations/${id}/takeover`, { method: 'POST' });
    await page.waitForSelector('.event:has-text("joined the conversation")');
    await page.waitForSelector('text=You are talking with a person from the team');
    await api(`/api/v1/conversations/${id}/messages`, { method: 'POST', body: { content: 'Hi, I am here to help.', stream: false } });
    const reply = page.locator('.msg.staff');
    await reply.waitFor();
    check((await reply.innerText()).includes('Creator'), 'the reply names the person');
    const input = page.getByLabel('Your message');
    await input.fill('Thank you!');
    await input.press('Enter');
    await until('the end user\'s reply reaches the team', async () => {
      const history = await api(`/api/v1/conversations/${id}/messages`);
      return history.messages.some((m) => m.role === 'user' && m.content === 'Thank you!');
    });
    const last = (await api(`/api/v1/conversations/${id}`)).last_seq;
    await api(`/api/v1/conversations/${id}/receipts`, { method: 'POST', body: { seq: last, status: 'read' } });
    await page.waitForSelector('.msg.user >> text=Read');
    check(await page.locator('.msg.assistant[data-role="assistant"]').count() === 1, 'the coach stayed silent');
    await api(`/api/v1/conversations/${id}/handback`, { method: 'POST' });
    await page.waitForSelector('.event:has-text("handed the conversation back")');
    await page.screenshot({ path: path.join(shots, 'chat-page-handoff.png') });
  });
  await context.close();

  await step('the chat page fits a phone', async () => {
    const { context: small, page: mobile } = await open(phone);
    await mobile.goto(`${base}/c/${slug}`);
    await ready(mobile);
    const overflow = await mobile.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
    check(!overflow, 'no horizontal scrolling');
    await mobile.screenshot({ path: path.join(shots, 'chat-page-phone.png') });
    await small.close();
  });

  const allowed = await website('Allowed site');
  const noSockets = await website('Site behind a proxy', 'data-transport="events"');
  const refused = await website('Other site');
  await api('/api/v1/tenant', { method: 'PATCH', body: { allowed_origins: [allowed.origin, noSockets.origin] } });

  await step('the widget works on another, allowed origin, untouched by its CSS', async () => {
    const { context: visit, page: site } = await open(desktop);
    await site.goto(allowed.origin);
    const launcher = site.locator('.launcher');
    await launcher.waitFor();
    await site.waitForSelector('.teaser:has-text("Questions about your order?")');
    const look = await launcher.evaluate((node) => {
      const style = getComputedStyle(node);
      return { display: style.display, background: style.backgroundColor };
    });
    check(look.display !== 'none', 'the page cannot hide the widget');
    check(look.background === 'rgb(91, 33, 182)', `brand colour: ${look.background}`);
    const heading = await site.locator('body > h1').evaluate((node) => getComputedStyle(node).letterSpacing);
    check(heading === '3px', 'the widget leaves the page alone');
    await site.screenshot({ path: path.join(shots, 'widget-closed.png') });
    await launcher.click();
    check(await launcher.getAttribute('aria-expanded') === 'true', 'the launcher says it is open');
    await ready(site);
    const fontSize = await site.locator('.panel').evaluate((node) => getComputedStyle(node).fontSize);
    check(fontSize === '15px', `the page's font rules do not leak in (${fontSize})`);
    const input = site.getByLabel('Your message');
    await input.fill('Can I get a refund for a gift card?');
    await input.press('Enter');
    await site.waitForSelector('.msg.user[data-seq="1"]');
    await site.waitForSelector('.msg.assistant[data-role="assistant"]', { timeout: ANSWER_MS });
    await site.screenshot({ path: path.join(shots, 'widget-open.png') });
    await site.keyboard.press('Escape');
    check(await launcher.getAttribute('aria-expanded') === 'false', 'Escape closes the widget');

    // A message from the team while the chat is closed: a badge on the launcher, kept across a
    // reload, gone once the chat is opened (which reads it).
    const { conversations } = await api('/api/v1/inbox');
    const latest = conversations[0].conversation.id;
    await api(`/api/v1/conversations/${latest}/takeover`, { method: 'POST' });
    await api(`/api/v1/conversations/${latest}/messages`, { method: 'POST', body: { content: 'A note from the team while you were away.', stream: false } });
    const badge = site.locator('.launcher .badge');
    await site.waitForSelector('.launcher .badge:has-text("1")');
    check((await launcher.getAttribute('aria-label')) === 'Open chat (1 new)', 'the launcher says so');
    await site.screenshot({ path: path.join(shots, 'widget-unread.png') });
    await site.reload();
    await site.waitForSelector('.launcher .badge:has-text("1")');
    await launcher.click();
    await site.waitForSelector('.msg.staff:has-text("A note from the team")');
    check(!(await badge.isVisible()), 'opened: no badge');
    await api(`/api/v1/conversations/${latest}/handback`, { method: 'POST' });
    await visit.close();
  });

  await step('without WebSockets the widget falls back to the event stream, across origins', async () => {
    const { context: visit, page: site } = await open(desktop);
    const sockets = [];
    site.on('websocket', (socket) => sockets.push(socket.url()));
    await site.goto(noSockets.origin);
    await site.locator('.launcher').click();
    await ready(site);
    const input = site.getByLabel('Your message');
    await input.fill('Can I talk to a human?');
    await input.press('Enter');
    await site.waitForSelector('.msg.user[data-seq="1"]');
    await site.waitForSelector('.event:has-text("talk to a person")');
    check(sockets.length === 0, `no WebSocket was used: ${sockets}`);
    await visit.close();
  });

  await step('the widget refuses an origin the creator did not allow', async () => {
    const { context: visit, page: site } = await open(desktop);
    await site.goto(refused.origin);
    await site.waitForSelector(`${host}[data-state="refused"]`, { state: 'attached' });
    check(await site.locator('.launcher').count() === 0, 'no bubble');
    const status = await site.evaluate(async ([url, coach]) => {
      const response = await fetch(`${url}/api/v1/public/coaches/${coach}/visitors`, { method: 'POST' });
      return [response.status, (await response.json()).error.code];
    }, [base, slug]);
    check(status[0] === 403 && status[1] === 'origin_not_allowed', `no visitor token: ${status}`);
    await visit.close();
  });

  await step('a program link enrols the visitor in their time zone, and the first step arrives live', async () => {
    // No quiet hours, so the step goes out now whatever the hour of the run.
    await api('/api/v1/coach', { method: 'PATCH', body: { quiet_hours: '00:00-00:00' } });
    const program = await api('/api/v1/programs', {
      method: 'POST',
      body: { name: 'Welcome week', steps: [{ key: 'hello', day: 0, at: '00:00', kind: 'message', text: 'Welcome the person to the week and invite them to reply any time.' }] },
    });
    await api(`/api/v1/programs/${program.id}/publish`, { method: 'POST', body: {} });
    const visit = await browser.newContext({ viewport: desktop, timezoneId: 'Asia/Tokyo' });
    const site = watch(await visit.newPage(), problems);
    await site.goto(`${base}/c/${slug}?program=${program.id}`);
    await ready(site);
    const person = await until('the enrolment', async () => {
      const list = await api(`/api/v1/end-users?program_id=${program.id}`);
      return list.total === 1 && list.end_users[0];
    });
    check(person.time_zone === 'Asia/Tokyo', `the browser's zone: ${person.time_zone}`);
    const sent = await until('the step', async () => {
      const { nudges } = await api(`/api/v1/nudges?end_user_id=${person.id}`);
      return nudges.find((n) => n.step_key === 'hello' && n.sent_at);
    }, ANSWER_MS);
    // The coach wrote it (the model is loaded); the page shows it without a reload.
    const opening = sent.content.replace(/\s+/g, ' ').trim().slice(0, 24);
    await site.waitForSelector(`.msg.assistant:has-text(${JSON.stringify(opening)})`);
    const receipt = await until('the delivery receipt', async () => {
      const { nudges } = await api(`/api/v1/nudges?end_user_id=${person.id}`);
      const step = nudges.find((n) => n.step_key === 'hello');
      return ['delivered', 'read'].includes(step.status) && step.status;
    });
    check(Boolean(receipt), 'delivered on the open page');
    await site.screenshot({ path: path.join(shots, 'chat-page-program-step.png') });
    await visit.close();
    await api('/api/v1/coach', { method: 'PATCH', body: { quiet_hours: '21:00-08:00' } });
  });

  await step('a choice step shows quick replies, and a tap takes its branch', async () => {
    await api('/api/v1/coach', { method: 'PATCH', body: { quiet_hours: '00:00-00:00' } });
    const program = await api('/api/v1/programs', {
      method: 'POST',
      body: {
        name: 'Choose your path',
        steps: [
          { key: 'pick', day: 0, at: '00:00', kind: 'message', text: 'Ask whether they prefer morning or evening workouts.',
            choices: [{ label: 'Morning', next: 'am' }, { label: 'Evening', next: 'pm' }] },
          { key: 'am', day: 0, at: '00:00', kind: 'message', text: 'Suggest setting the alarm twenty minutes early.' },
          { key: 'pm', day: 0, at: '00:00', kind: 'message', text: 'Suggest blocking six in the evening in the calendar.' },
        ],
      },
    });
    await api(`/api/v1/programs/${program.id}/publish`, { method: 'POST', body: {} });
    const visit = await browser.newContext({ viewport: phone });
    const site = watch(await visit.newPage(), problems);
    await site.goto(`${base}/c/${slug}?program=${program.id}`);
    await ready(site);
    const morning = site.getByRole('group', { name: 'Quick replies' }).getByRole('button', { name: 'Morning' });
    await morning.waitFor({ timeout: ANSWER_MS });
    await site.screenshot({ path: path.join(shots, 'chat-page-quick-replies.png') });
    await morning.click();
    await site.waitForSelector('.msg.user:has-text("Morning")');
    check(!(await morning.isVisible()), 'answered: the quick replies go away');
    const person = await until('the enrolment', async () => {
      const list = await api(`/api/v1/end-users?program_id=${program.id}`);
      return list.total === 1 && list.end_users[0];
    });
    const branch = await until('the chosen branch', async () => {
      const { nudges } = await api(`/api/v1/nudges?end_user_id=${person.id}`);
      return nudges.find((n) => n.step_key === 'am' && n.sent_at);
    }, ANSWER_MS);
    const { nudges } = await api(`/api/v1/nudges?end_user_id=${person.id}`);
    check(!nudges.some((n) => n.step_key === 'pm' && n.sent_at), 'the other branch is not sent');
    const opening = branch.content.replace(/\s+/g, ' ').trim().slice(0, 24);
    await site.waitForSelector(`.msg.assistant:has-text(${JSON.stringify(opening)})`);
    await visit.close();
    await api('/api/v1/coach', { method: 'PATCH', body: { quiet_hours: '21:00-08:00' } });
  });

  await step('a check-in shows a box for the number, and the value sent is recorded', async () => {
    await api('/api/v1/coach', { method: 'PATCH', body: { quiet_hours: '00:00-00:00' } });
    const program = await api('/api/v1/programs', {
      method: 'POST',
      body: {
        name: 'Push-up starter',
        goals: [{ key: 'pushups', title: 'Push-ups', metric: 'push-ups', unit: 'reps', target: 50, direction: 'increase' }],
        steps: [{ key: 'ask', day: 0, at: '00:00', kind: 'check_in', goal_key: 'pushups', text: 'How many push-ups did you do today?' }],
      },
    });
    await api(`/api/v1/programs/${program.id}/publish`, { method: 'POST', body: {} });
    const visit = await browser.newContext({ viewport: phone });
    const site = watch(await visit.newPage(), problems);
    await site.goto(`${base}/c/${slug}?program=${program.id}`);
    await ready(site);
    const box = site.getByLabel('Your number');
    await box.waitFor({ timeout: ANSWER_MS });
    check(await site.locator('form.value .unit').innerText() === 'reps', 'the box names the unit');
    await box.fill('42');
    await site.screenshot({ path: path.join(shots, 'chat-page-check-in.png') });
    await box.press('Enter');
    await site.waitForSelector('.msg.assistant:has-text("42 reps recorded")');
    const person = (await api(`/api/v1/end-users?program_id=${program.id}`)).end_users[0];
    const { nudges } = await api(`/api/v1/nudges?end_user_id=${person.id}`);
    const goal = await api(`/api/v1/goals/${nudges.find((n) => n.step_key === 'ask').goal_id}`);
    check(goal.latest_value === 42, `the value is recorded: ${goal.latest_value}`);
    check(!(await box.isVisible()), 'answered: the box goes away');
    await site.getByRole('button', { name: 'My progress' }).click();
    const progress = site.getByRole('region', { name: 'My progress' });
    await progress.waitFor();
    const shown = await progress.innerText();
    check(shown.includes('Push-ups: 42 of 50 reps') && shown.includes('Push-up starter'), `the goal and the program: ${shown}`);
    check(shown.includes('Latest step: How many push-ups'), `the latest step, in the words they received: ${shown}`);
    await site.screenshot({ path: path.join(shots, 'chat-page-progress.png') });
    // From the panel, a code to continue in a messaging app.
    await progress.getByRole('button', { name: 'Continue in another app…' }).click();
    await site.waitForSelector('.msg.assistant:has-text("Your link code is")');
    await visit.close();
    await api('/api/v1/coach', { method: 'PATCH', body: { quiet_hours: '21:00-08:00' } });
  });

  await step('the end user downloads their data, then deletes it, from the chat page', async () => {
    const before = (await api('/api/v1/end-users')).total;
    const visit = await browser.newContext({ viewport: phone });
    const site = watch(await visit.newPage(), problems);
    await site.goto(`${base}/c/${slug}`);
    await ready(site);
    await site.getByRole('button', { name: 'My data' }).click();
    const panel = site.getByRole('region', { name: 'My data' });
    await panel.getByRole('button', { name: 'Download my data' }).click();
    const link = panel.getByRole('link', { name: 'Download your data (ZIP)' });
    await link.waitFor({ timeout: 30000 });
    const href = await link.getAttribute('href');
    const zip = await site.request.get(href);
    check(zip.status() === 200, `the link downloads: ${zip.status()}`);
    check((await zip.body()).subarray(0, 2).toString() === 'PK', 'a ZIP');
    check((await api('/api/v1/end-users')).total === before + 1, 'the export made them an end user');
    await site.screenshot({ path: path.join(shots, 'chat-page-my-data.png') });
    await panel.getByRole('button', { name: 'Delete my data' }).click();
    check((await panel.innerText()).includes('cannot be undone'), 'the confirmation says what it means');
    await panel.getByRole('button', { name: 'Yes, delete everything' }).click();
    await site.waitForSelector('text=Your data was deleted');
    check((await api('/api/v1/end-users')).total === before, 'erased');
    const gone = await site.request.get(href);
    check(gone.status() === 404, `the link went with the data: ${gone.status()}`);
    await visit.close();
  });

  allowed.close();
  noSockets.close();
  refused.close();
  check(problems.length === 0, `no console errors: ${problems.join('; ')}`);
} finally {
  await browser.close();
}
