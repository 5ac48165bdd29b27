/* Compañero chat: the served chat page (/c/{slug}) and the website widget, in one file with no
 * build step. On any website:
 *
 *   <script src="https://HOST/widget.js" data-coach="your-slug" async></script>
 *
 * The UI lives in a shadow root, so the host page's CSS cannot reach it and its CSS cannot reach
 * the page. It talks to the server over the live WebSocket (docs/websocket-protocol.md) and falls
 * back to the event stream and plain requests when a WebSocket cannot be opened.
 * Options (data- attributes): data-coach (required), data-program (enrol the visitor in a
 * program, as the link /c/{slug}?program={id} does), data-mode="page" (full window),
 * data-transport="events" (skip the WebSocket), data-preview + data-mount="#selector" (the
 * dashboard's live preview: drawn inside that element, offline, restyled by `companero-preview`
 * events carrying coach settings), data-token + data-conversation + data-mount (the program
 * builder's "Try it": a test end user's live chat inside the dashboard, never stored).
 */
(() => {
  'use strict';
  const script = document.currentScript;
  if (!script || !script.dataset.coach) {
    console.warn('Compañero: add data-coach="your-coach" to the widget script tag');
    return;
  }
  const slug = script.dataset.coach;
  const pageMode = script.dataset.mode === 'page';
  const base = new URL(script.src, location.href).origin;
  const forceEvents = script.dataset.transport === 'events';
  const preview = script.dataset.preview !== undefined;
  // The program builder's "Try it": the live chat of a test end user (their visitor token),
  // drawn inside the dashboard. Nothing of it is kept in this browser's storage.
  const session = script.dataset.token || null;
  const mount = ((preview || session) && document.querySelector(script.dataset.mount)) || null;
  const storeKey = session ? null : `companero:${base}:${slug}`;

  // The chat page can be installed as an app: its service worker keeps the shell for offline
  // starts (never the conversation). Only on the chat page itself, never on a creator's site.
  if (pageMode && !preview && 'serviceWorker' in navigator && location.origin === base) {
    navigator.serviceWorker.register('/chat-sw.js', { scope: `/c/${encodeURIComponent(slug)}` })
      .catch((error) => console.warn('Compañero: the app shell is not kept offline', error));
  }

  // ---- storage: the visitor token and conversation survive a reload ----
  const memory = {};
  const store = {
    load() {
      if (!storeKey) return { token: session, conversationId: script.dataset.conversation || null };
      try { return JSON.parse(localStorage.getItem(storeKey) || '{}'); } catch { return { ...memory }; }
    },
    save(value) {
      Object.assign(memory, value);
      if (!storeKey) return;
      try { localStorage.setItem(storeKey, JSON.stringify(memory)); } catch { /* private mode */ }
    },
  };
  Object.assign(memory, store.load());

  async function api(path, { method = 'GET', body, token } = {}) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(base + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = response.status === 204 ? {} : await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error((data.error && data.error.message) || `HTTP ${response.status}`);
      error.code = data.error && data.error.code;
      error.status = response.status;
      throw error;
    }
    return data;
  }

  // ---- safe Markdown: builds DOM nodes, never parses HTML ----
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function inline(text, cite) {
    const out = [];
    const pattern = /(\*\*[^*]+\*\*|\*[^*\s][^*]*\*|`[^`]+`|\[[^\]]+\]\((https?:\/\/[^\s)]+)\)|\[\d+(?:,\s*\d+)*\])/g;
    let last = 0;
    for (const match of text.matchAll(pattern)) {
      if (match.index > last) out.push(text.slice(last, match.index));
      const token = match[0];
      if (token.startsWith('**')) out.push(el('strong', {}, token.slice(2, -2)));
      else if (token.startsWith('`')) out.push(el('code', {}, token.slice(1, -1)));
      else if (token.startsWith('*')) out.push(el('em', {}, token.slice(1, -1)));
      else if (match[2]) {
        const label = token.slice(1, token.indexOf(']('));
        out.push(el('a', { href: match[2], target: '_blank', rel: 'noopener noreferrer' }, label));
      } else {
        const markers = token.slice(1, -1).split(',').map((n) => Number(n.trim()));
        for (const marker of markers) out.push(cite ? cite(marker) : `[${marker}]`);
      }
      last = match.index + token.length;
    }
    if (last < text.length) out.push(text.slice(last));
    return out;
  }

  function markdown(text, cite) {
    const blocks = [];
    const lines = text.replace(/\r\n/g, '\n').split('\n');
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (line.startsWith('```')) {
        const code = [];
        i += 1;
        while (i < lines.length && !lines[i].startsWith('```')) code.push(lines[i++]);
        i += 1;
        blocks.push(el('pre', {}, el('code', {}, code.join('\n'))));
      } else if (/^#{1,6}\s/.test(line)) {
        blocks.push(el('p', { class: 'heading' }, el('strong', {}, inline(line.replace(/^#+\s/, ''), cite))));
        i += 1;
      } else if (/^\s*([-*]|\d+[.)])\s+/.test(line)) {
        const ordered = /^\s*\d/.test(line);
        const list = el(ordered ? 'ol' : 'ul');
        while (i < lines.length && /^\s*([-*]|\d+[.)])\s+/.test(lines[i])) {
          list.append(el('li', {}, inline(lines[i].replace(/^\s*([-*]|\d+[.)])\s+/, ''), cite)));
          i += 1;
        }
        blocks.push(list);
      } else if (line.trim() === '') {
        i += 1;
      } else {
        const paragraph = [];
        while (i < lines.length && lines[i].trim() !== '' && !lines[i].startsWith('```')
          && !/^#{1,6}\s/.test(lines[i]) && !/^\s*([-*]|\d+[.)])\s+/.test(lines[i])) {
          paragraph.push(lines[i++]);
        }
        const p = el('p');
        paragraph.forEach((part, n) => {
          if (n) p.append(el('br'));
          p.append(...inline(part, cite));
        });
        blocks.push(p);
      }
    }
    return blocks;
  }

  // ---- colours: text on the brand colour stays readable ----
  function readableOn(hex) {
    const v = /^#?([0-9a-f]{6})$/i.exec(hex || '');
    if (!v) return '#ffffff';
    const [r, g, b] = [0, 2, 4].map((o) => {
      const c = parseInt(v[1].slice(o, o + 2), 16) / 255;
      return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    });
    const luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    return luminance > 0.36 ? '#111827' : '#ffffff';
  }

  const css = `
    :host { all: initial; }
    * { box-sizing: border-box; }
    .root { --brand: #2f6f5e; --on-brand: #fff; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
      color: #111827; }
    .launcher { position: fixed; bottom: 20px; width: 60px; height: 60px; border-radius: 50%; border: 0;
      background: var(--brand); color: var(--on-brand); cursor: pointer; box-shadow: 0 6px 20px rgba(0,0,0,.25);
      display: grid; place-items: center; z-index: 2147483000; }
    .launcher svg { width: 28px; height: 28px; }
    .launcher .badge { position: absolute; top: -4px; right: -4px; min-width: 22px; height: 22px; padding: 0 6px; border-radius: 11px;
      background: #b91c1c; color: #fff; font-size: 12.5px; font-weight: 700; line-height: 22px; text-align: center; }
    .launcher .badge[hidden] { display: none; }
    .left .launcher, .left .teaser, .left .panel { left: 20px; }
    .right .launcher, .right .teaser, .right .panel { right: 20px; }
    .teaser { position: fixed; bottom: 92px; max-width: 260px; background: #fff; color: #111827; border-radius: 12px;
      padding: 10px 14px; box-shadow: 0 6px 20px rgba(0,0,0,.18); z-index: 2147483000; border: 0; text-align: left;
      font: inherit; cursor: pointer; }
    .panel { position: fixed; bottom: 92px; width: 380px; height: min(620px, calc(100vh - 120px)); background: #fff;
      border-radius: 16px; box-shadow: 0 12px 40px rgba(0,0,0,.25); display: flex; flex-direction: column;
      overflow: hidden; z-index: 2147483001; }
    .panel[hidden], .teaser[hidden] { display: none; }
    .page .panel { position: fixed; inset: 0; width: 100%; height: 100%; border-radius: 0; box-shadow: none; }
    .page .panel .inner { max-width: 760px; width: 100%; margin: 0 auto; }
    @media (max-width: 480px) { .bubble:not(.preview) .panel { inset: 0; width: 100%; height: 100%; border-radius: 0; } }
    .preview .launcher, .preview .teaser, .preview .panel { position: absolute; z-index: 1; }
    .preview .panel { height: auto; top: 16px; bottom: 150px; max-width: calc(100% - 40px); }
    .preview.session .panel { inset: 0; width: 100%; max-width: none; border-radius: 0; box-shadow: none; }
    header { background: var(--brand); color: var(--on-brand); padding: 12px 16px; display: flex; flex-wrap: wrap; align-items: center; gap: 8px 12px; }
    header .who { flex: 1 1 110px; min-width: 0; }
    header .status span:last-child { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
    header .name { font-size: 16px; margin: 0; font-weight: 650; }
    header .status { font-size: 12.5px; opacity: .92; display: flex; align-items: center; gap: 6px; }
    .dot { width: 8px; height: 8px; border-radius: 50%; background: #9ca3af; display: inline-block; flex: none; }
    .dot.on { background: #22c55e; box-shadow: 0 0 0 2px rgba(255,255,255,.6); }
    .avatar { width: 36px; height: 36px; border-radius: 50%; background: rgba(255,255,255,.25); display: grid; place-items: center;
      font-weight: 700; overflow: hidden; flex: none; }
    .avatar img { width: 100%; height: 100%; object-fit: cover; }
    header button { background: transparent; color: inherit; border: 1px solid currentColor; border-radius: 999px;
      padding: 5px 10px; font: inherit; font-size: 13px; cursor: pointer; white-space: nowrap; }
    header button.icon { border: 0; font-size: 22px; line-height: 1; padding: 4px 8px; }
    .log { flex: 1; overflow-y: auto; padding: 16px; display: flex; flex-direction: column; gap: 10px; background: #f8fafc; }
    .inner { display: flex; flex-direction: column; gap: 10px; }
    .msg { max-width: 85%; padding: 10px 13px; border-radius: 14px; word-wrap: break-word; overflow-wrap: anywhere; }
    .msg p { margin: 0 0 .5em; } .msg p:last-child { margin-bottom: 0; }
    .msg ul, .msg ol { margin: .25em 0 .5em; padding-left: 1.3em; }
    .msg pre { background: #0f172a; color: #e2e8f0; padding: 8px 10px; border-radius: 8px; overflow-x: auto; font-size: 13px; }
    .msg code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .92em; }
    .msg a { color: inherit; }
    .user { align-self: flex-end; background: var(--brand); color: var(--on-brand); border-bottom-right-radius: 4px; }
    .assistant, .staff { align-self: flex-start; background: #fff; border: 1px solid #e5e7eb; border-bottom-left-radius: 4px; }
    .staff { border-color: var(--brand); }
    .author { font-size: 12px; font-weight: 650; color: #374151; margin-bottom: 2px; }
    .event { align-self: center; font-size: 13px; color: #374151; background: #eef2f7; border-radius: 999px; padding: 4px 12px; text-align: center; }
    .meta { font-size: 11.5px; color: #4b5563; margin-top: 4px; }
    .user .meta { color: inherit; opacity: .85; text-align: right; }
    .cite { font: inherit; font-size: 11px; font-weight: 700; vertical-align: super; line-height: 1; border: 1px solid #94a3b8;
      background: #f1f5f9; color: #1f2937; border-radius: 6px; padding: 1px 5px; margin: 0 1px; cursor: pointer; }
    .cite[aria-expanded="true"] { background: var(--brand); color: var(--on-brand); border-color: var(--brand); }
    .source { margin-top: 8px; border-left: 3px solid var(--brand); background: #f8fafc; padding: 6px 10px; border-radius: 0 8px 8px 0; font-size: 13.5px; }
    .source .title { font-weight: 650; }
    .source blockquote { margin: 4px 0 0; color: #374151; }
    .typing { align-self: flex-start; font-size: 13px; color: #4b5563; padding: 2px 4px; }
    .typing[hidden] { display: none; }
    .alert { margin: 0; padding: 8px 16px; background: #fef2f2; color: #991b1b; font-size: 13.5px; }
    .alert:empty { display: none; }
    form { display: flex; gap: 8px; padding: 10px 12px; border-top: 1px solid #e5e7eb; background: #fff; }
    textarea { flex: 1; resize: none; font: inherit; padding: 9px 11px; border-radius: 10px; border: 1px solid #9ca3af;
      max-height: 140px; min-height: 42px; color: #111827; background: #fff; }
    form button { background: var(--brand); color: var(--on-brand); border: 0; border-radius: 10px; padding: 0 16px; font: inherit;
      font-weight: 650; cursor: pointer; }
    form button:disabled { opacity: .55; cursor: default; }
    :focus-visible { outline: 3px solid #2563eb; outline-offset: 2px; }
    .prompt { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 8px; }
    .prompt[hidden] { display: none; }
    .prompt button { font: inherit; font-size: 14px; border: 1px solid var(--brand); background: #fff; color: #111827;
      border-radius: 999px; padding: 5px 12px; cursor: pointer; }
    .prompt button.primary { background: var(--brand); color: var(--on-brand); }
    .msg form.value { border: 0; padding: 0; background: transparent; margin-top: 8px; gap: 6px; }
    .msg form.value input { width: 7em; font: inherit; padding: 6px 8px; border-radius: 8px; border: 1px solid #9ca3af; color: #111827; background: #fff; }
    .msg form.value button { padding: 6px 12px; }
    .msg form.value .unit { align-self: center; color: #374151; }
    .consent { align-self: flex-start; max-width: 85%; background: #fff; border: 1px dashed var(--brand); border-radius: 14px; padding: 10px 13px; }
    .consent p { margin: 0; }
    .progress { background: #fff; border-bottom: 1px solid #e5e7eb; padding: 10px 16px; max-height: 40%; overflow-y: auto; }
    .progress[hidden] { display: none; }
    .progress h3 { margin: 0 0 6px; font-size: 14px; }
    .my-data button { margin: 6px 8px 0 0; }
    .my-data .danger { color: #b91c1c; border-color: #fca5a5; }
    .progress .item { margin: 6px 0; }
    .progress progress { width: 100%; height: 8px; accent-color: var(--brand); }
    .progress .meta { margin-top: 0; }
    .sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
  `;

  // ---- the UI ----
  // A tag of its own: the host page's `div { ... }` rules cannot match it.
  const host = document.createElement('companero-chat');
  host.id = `companero-chat-${slug}`;
  host.dataset.state = 'loading';
  const shadow = host.attachShadow({ mode: 'open' });
  const root = el('div', { class: `root ${pageMode ? 'page' : 'bubble'}${mount ? ' preview' : ''}${session ? ' session' : ''} right` });
  shadow.append(el('style', {}, css), root);

  const state = {
    coach: null, token: memory.token, conversationId: memory.conversationId, lastSeq: 0,
    messages: new Map(), pending: new Map(), draft: null, readSeq: memory.readSeq || 0, staffReadSeq: 0, staffOnline: false,
    mode: 'ai', maxChars: 4000,
    // The end user's answer about check-ins: undefined until known, null when never asked.
    consent: undefined,
    push: false,
  };

  const titleId = `companero-title-${slug}`;
  const avatar = el('div', { class: 'avatar', 'aria-hidden': 'true' });
  // The chat page's main heading; on someone else's website, not a second h1.
  const title = el(pageMode ? 'h1' : 'h2', { id: titleId, class: 'name' });
  const statusDot = el('span', { class: 'dot' });
  const statusText = el('span');
  const personButton = el('button', { type: 'button', onclick: () => requestPerson() }, 'Talk to a person');
  // Their goals and programs, once they have some.
  const progressButton = el('button', { type: 'button', hidden: true, 'aria-expanded': 'false', onclick: () => toggleProgress() }, 'My progress');
  const progressPanel = el('section', { class: 'progress', hidden: true, 'aria-label': 'My progress' });
  // Their data: a download (a link valid 24 h) and "delete my data", with a confirmation.
  const dataButton = el('button', { type: 'button', hidden: preview, 'aria-expanded': 'false', onclick: () => toggleData() }, 'My data');
  const dataPanel = el('section', { class: 'progress my-data', hidden: true, 'aria-label': 'My data' });
  // Check-ins on or off, once the end user has answered; STOP works here too.
  const checkInsButton = el('button', { type: 'button', hidden: true, 'aria-pressed': 'false', onclick: () => setConsent(!state.consent) }, 'Check-ins');
  // Notifications on the chat page (installed or not): staff replies and check-ins reach a
  // closed page by Web Push. Only where the browser has it, never in the builder's preview.
  const pushSupported = pageMode && !preview && location.origin === base
    && 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window;
  const pushButton = el('button', { type: 'button', hidden: true, 'aria-pressed': 'false', onclick: () => setPush(!state.push) }, 'Notifications');
  const closeButton = pageMode ? null
    : el('button', { type: 'button', class: 'icon', 'aria-label': 'Close chat', onclick: () => toggle(false) }, '×');
  const inner = el('div', { class: 'inner' });
  const typing = el('div', { class: 'typing', hidden: true, 'aria-live': 'polite' });
  const log = el('div', { class: 'log', role: 'log', 'aria-live': 'polite', 'aria-relevant': 'additions', 'aria-labelledby': titleId, tabindex: '0' }, inner, typing);
  const alert = el('p', { class: 'alert', role: 'alert' });
  const input = el('textarea', { rows: '1', id: `companero-input-${slug}`, placeholder: 'Write a message…', maxlength: '4000', 'aria-label': 'Your message' });
  const sendButton = el('button', { type: 'submit' }, 'Send');
  const form = el('form', { onsubmit: (event) => { event.preventDefault(); submit(); } }, input, sendButton);
  const panel = el('section', { class: 'panel', role: pageMode ? 'main' : 'dialog', 'aria-labelledby': titleId, hidden: !pageMode },
    el('header', {}, avatar, el('div', { class: 'who' }, title, el('div', { class: 'status' }, statusDot, statusText)), progressButton, checkInsButton, pushButton, dataButton, personButton, closeButton),
    progressPanel, dataPanel, log, alert, form);
  const launcher = el('button', { class: 'launcher', type: 'button', 'aria-expanded': 'false', 'aria-label': 'Open chat', onclick: () => toggle() });
  launcher.innerHTML = '<svg viewBox="0 0 24 24" fill="currentColor" aria-hidden="true"><path d="M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H8l-4 4V6a2 2 0 0 1 2-2z"/></svg>';
  // Messages from the coach or the team that arrived while the chat was closed (a nudge, a reply).
  const badge = el('span', { class: 'badge', hidden: true, 'aria-hidden': 'true' });
  launcher.append(badge);

  function renderBadge() {
    const unread = pageMode || !panel.hidden ? 0 : [...state.messages.values()]
      .filter((m) => (m.role === 'assistant' || m.role === 'staff') && m.seq > state.readSeq).length;
    badge.hidden = unread === 0;
    badge.textContent = String(unread);
    const open = !panel.hidden;
    launcher.setAttribute('aria-label', open ? 'Close chat' : unread ? `Open chat (${unread} new)` : 'Open chat');
  }
  const teaser = el('button', { class: 'teaser', type: 'button', hidden: true, onclick: () => toggle(true) });

  function toggle(open = panel.hidden) {
    panel.hidden = !open;
    teaser.hidden = true;
    launcher.setAttribute('aria-expanded', String(open));
    if (open) {
      start();
      input.focus();
      markRead();
    } else {
      launcher.focus();
    }
    renderBadge();
  }
  root.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && !pageMode && !panel.hidden) toggle(false);
  });
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) { event.preventDefault(); submit(); }
  });
  let typingTimer = null;
  input.addEventListener('input', () => {
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight, 140)}px`;
    if (!transport) return;
    transport.typing(true);
    clearTimeout(typingTimer);
    typingTimer = setTimeout(() => transport && transport.typing(false), 3000);
  });

  function showError(text) {
    alert.textContent = text || '';
  }

  function renderStatus() {
    const human = state.mode === 'human';
    statusDot.className = `dot${state.staffOnline || human ? ' on' : ''}`;
    statusText.textContent = human ? 'You are talking with a person from the team'
      : state.staffOnline ? 'AI coach · the team is online' : 'AI coach';
    personButton.hidden = human;
  }

  function applyCoach(coach) {
    state.coach = coach;
    root.style.setProperty('--brand', coach.brand_color);
    root.style.setProperty('--on-brand', readableOn(coach.brand_color));
    root.classList.toggle('left', coach.widget_position === 'left');
    root.classList.toggle('right', coach.widget_position !== 'left');
    title.textContent = coach.name;
    avatar.textContent = '';
    if (coach.avatar_url) avatar.append(el('img', { src: coach.avatar_url, alt: '' }));
    else avatar.textContent = coach.name.trim().charAt(0).toUpperCase();
    launcher.style.setProperty('--brand', coach.brand_color);
    state.staffOnline = coach.staff_online;
    renderStatus();
    if (preview) {
      teaser.textContent = coach.opening_message;
      teaser.hidden = !coach.opening_message;
      greetingNode.replaceChildren(...markdown(coach.greeting || ''));
    } else if (!pageMode && coach.opening_message && !memory.teaserSeen) {
      teaser.textContent = coach.opening_message;
      teaser.hidden = false;
      store.save({ teaserSeen: true });
    }
  }
  const greetingNode = el('div', { class: 'msg assistant', 'data-role': 'greeting' });

  function citationBox(message, marker, button) {
    const citation = message.citations.find((c) => c.marker === marker);
    if (!citation) return null;
    const where = [citation.document_title, citation.page ? `page ${citation.page}` : null, citation.heading_path || null]
      .filter(Boolean).join(' · ');
    return el('div', { class: 'source', id: button.getAttribute('aria-controls') },
      el('div', { class: 'title' }, `Source ${marker}: ${where}`),
      el('blockquote', {}, `“${citation.snippet}”`));
  }

  let citeIds = 0;
  function renderBody(message, container) {
    container.textContent = '';
    if (message.role === 'assistant' && message.citations && message.citations.length) {
      const sources = el('div', { class: 'sources' });
      const cite = (marker) => {
        if (!message.citations.some((c) => c.marker === marker)) return `[${marker}]`;
        const id = `companero-source-${++citeIds}`;
        const button = el('button', { type: 'button', class: 'cite', 'aria-expanded': 'false', 'aria-controls': id,
          'aria-label': `Show source ${marker}` }, String(marker));
        button.addEventListener('click', () => {
          const open = button.getAttribute('aria-expanded') === 'true';
          sources.querySelectorAll('.source').forEach((node) => node.remove());
          container.querySelectorAll('.cite').forEach((b) => b.setAttribute('aria-expanded', 'false'));
          if (!open) {
            const box = citationBox(message, marker, button);
            if (box) sources.append(box);
            button.setAttribute('aria-expanded', 'true');
          }
        });
        return button;
      };
      container.append(...markdown(message.content, cite), sources);
    } else if (message.role === 'user') {
      container.append(...message.content.split('\n').flatMap((line, n) => (n ? [el('br'), line] : [line])));
    } else {
      container.append(...markdown(message.content));
    }
  }

  function receiptText(message) {
    if (message.seq && message.seq <= state.staffReadSeq) return 'Read';
    return message.seq ? 'Sent' : 'Sending…';
  }

  /** The message's node (not yet in the document). */
  function renderMessage(message) {
    if (message.role === 'event') {
      return el('div', { class: 'event', 'data-role': 'event', 'data-key': message.id, 'data-seq': message.seq }, message.content);
    }
    const body = el('div', { class: 'body' });
    renderBody(message, body);
    const parts = [];
    if (message.role === 'staff') parts.push(el('div', { class: 'author' }, message.author_name || 'Team'));
    parts.push(body);
    const prompt = promptFor(message);
    if (prompt) parts.push(prompt);
    if (message.role === 'user') parts.push(el('div', { class: 'meta receipt' }, receiptText(message)));
    return el('div', { class: `msg ${message.role}`, 'data-role': message.role, 'data-key': message.id, 'data-seq': message.seq || '' }, parts);
  }

  /** A proactive message's ways to answer: its quick replies, or a box for the number it asks. */
  function promptFor(message) {
    if (message.role !== 'assistant') return null;
    if (message.quick_replies && message.quick_replies.length) {
      return el('div', { class: 'prompt', role: 'group', 'aria-label': 'Quick replies' },
        ...message.quick_replies.map((label) => el('button', { type: 'button', onclick: () => send(label) }, label)));
    }
    if (message.asks_value) {
      const value = el('input', { type: 'number', step: 'any', inputmode: 'decimal', 'aria-label': 'Your number' });
      const unit = message.value_unit ? el('span', { class: 'unit' }, message.value_unit) : null;
      return el('form', { class: 'prompt value', onsubmit: (event) => { event.preventDefault(); if (value.value.trim()) send(value.value.trim()); } },
        value, unit, el('button', { type: 'submit' }, 'Send'));
    }
    return null;
  }

  /** Only the latest message's prompt is live: once the end user has written, it has been answered. */
  function refreshPrompts() {
    const nodes = [...inner.querySelectorAll('.msg')];
    const last = nodes[nodes.length - 1];
    inner.querySelectorAll('.msg .prompt').forEach((node) => { node.hidden = node.closest('.msg') !== last; });
  }

  function renderCheckIns() {
    checkInsButton.hidden = state.consent === undefined || state.consent === null;
    checkInsButton.setAttribute('aria-pressed', String(Boolean(state.consent)));
    checkInsButton.textContent = state.consent ? 'Check-ins on' : 'Check-ins off';
    checkInsButton.title = state.consent ? 'The coach checks in now and then; press to stop' : 'Press to let the coach check in now and then';
  }

  async function setConsent(consent) {
    try {
      const me = await api('/api/v1/public/me/consent', { method: 'POST', token: state.token, body: { consent } });
      state.consent = Boolean(me.consent) && !me.opted_out_at;
      renderCheckIns();
      return true;
    } catch (error) {
      showError(error.message);
      return false;
    }
  }

  function renderPush() {
    pushButton.hidden = !pushSupported || !state.token;
    pushButton.setAttribute('aria-pressed', String(Boolean(state.push)));
    pushButton.textContent = state.push ? 'Notifications on' : 'Notifications off';
    pushButton.title = state.push ? 'Replies and check-ins reach you while this page is closed; press to stop'
      : 'Press to hear of replies and check-ins while this page is closed';
  }

  /** The server's VAPID key as the bytes `pushManager.subscribe` takes. */
  function keyBytes(base64url) {
    const raw = atob(base64url.replace(/-/g, '+').replace(/_/g, '/'));
    return Uint8Array.from(raw, (c) => c.charCodeAt(0));
  }

  async function setPush(on) {
    showError('');
    try {
      const registration = await navigator.serviceWorker.ready;
      if (on) {
        if (await Notification.requestPermission() !== 'granted') {
          showError('Notifications are blocked for this page. Allow them in the browser\'s site settings.');
          return;
        }
        const { public_key: key } = await api('/api/v1/public/me/push', { token: state.token });
        const subscription = await registration.pushManager.getSubscription()
          || await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: keyBytes(key) });
        const status = await api('/api/v1/public/me/push', { method: 'PUT', token: state.token, body: subscription.toJSON() });
        state.push = status.subscriptions > 0;
      } else {
        const subscription = await registration.pushManager.getSubscription();
        if (subscription) await subscription.unsubscribe().catch(() => {});
        await api('/api/v1/public/me/push', { method: 'DELETE', token: state.token });
        state.push = false;
      }
    } catch (error) {
      showError(`Notifications could not be turned ${on ? 'on' : 'off'}: ${error.message}`);
    }
    renderPush();
  }

  /** Whether this browser gets pushes: subscribed here, and known to the server. */
  async function loadPush() {
    if (!pushSupported || !state.token) return renderPush();
    try {
      const registration = await navigator.serviceWorker.ready;
      const [subscription, status] = await Promise.all([
        registration.pushManager.getSubscription(),
        api('/api/v1/public/me/push', { token: state.token }),
      ]);
      state.push = Boolean(subscription) && status.subscriptions > 0 && Notification.permission === 'granted';
    } catch (_) { state.push = false; }
    renderPush();
  }

  /** What the coach knows of this end user: their check-in answer and their progress. */
  async function loadMe() {
    if (preview) return;
    try {
      const me = await api('/api/v1/public/me', { token: state.token });
      state.consent = me.consent;
      renderProgress(me);
    } catch (_) { state.consent = undefined; }
    renderCheckIns();
  }

  const figure = (n) => (Number.isInteger(n) ? String(n) : n.toFixed(1));
  function renderProgress(me) {
    const any = me.goals.length || me.programs.length;
    progressButton.hidden = !any;
    if (!any) return;
    const goals = me.goals.map((goal) => {
      const value = goal.latest_value === null ? 'no value yet' : `${figure(goal.latest_value)} of ${figure(goal.target)} ${goal.unit}`.trim();
      const streak = goal.current_streak > 1 ? ` · ${goal.current_streak} in a row` : '';
      return el('div', { class: 'item' },
        el('div', {}, `${goal.title}: ${value}${goal.status === 'reached' ? ' · reached!' : streak}`),
        el('progress', { max: '100', value: String(Math.round(goal.progress * 100)), 'aria-label': `${goal.title}: ${Math.round(goal.progress * 100)}%` }));
    });
    // The newest step they received, in the coach's words (what the creator wrote is an
    // instruction to the coach, not text for them).
    const latest = (program) => {
      if (!program.latest_step) return null;
      const text = program.latest_step.length > 140 ? `${program.latest_step.slice(0, 139)}…` : program.latest_step;
      return el('div', { class: 'meta latest-step' }, `Latest step: ${text}`);
    };
    const programs = me.programs.map((program) => el('div', { class: 'item' },
      el('div', {}, program.name),
      el('div', { class: 'meta' }, program.status === 'completed' ? 'Completed' : `Step ${program.steps_done} of ${program.steps}${program.status === 'paused' ? ' · paused' : ''}`),
      latest(program)));
    // The same person in a messaging app: the coach answers with a code to send there.
    const link = el('button', { type: 'button', class: 'link-app', onclick: () => { if (send('link my account')) toggleProgress(); } }, 'Continue in another app…');
    progressPanel.replaceChildren(el('h3', {}, 'My progress'), ...goals, ...programs, link);
  }

  async function toggleProgress() {
    const open = progressPanel.hidden;
    if (open) await loadMe();
    progressPanel.hidden = !open;
    progressButton.setAttribute('aria-expanded', String(open));
  }

  function toggleData(open = dataPanel.hidden) {
    if (open) renderData();
    dataPanel.hidden = !open;
    dataButton.setAttribute('aria-expanded', String(open));
  }

  /** The end user's own data: download it (prepared as a job), or delete it for good. */
  function renderData(note) {
    const download = el('button', { type: 'button', onclick: () => exportData() }, 'Download my data');
    const erase = el('button', { type: 'button', class: 'danger', onclick: () => confirmErase() }, 'Delete my data');
    const parts = [el('h3', {}, 'My data'),
      el('p', { class: 'meta' }, 'A copy of everything the coach keeps about you, or all of it deleted.')];
    if (note) parts.push(note);
    dataPanel.replaceChildren(...parts, download, erase);
  }

  async function exportData() {
    renderData(el('p', { role: 'status' }, 'Preparing your data…'));
    try {
      const own = await api('/api/v1/public/me/export', { method: 'POST', token: state.token });
      // Ready when the link stops answering 202 (a small export takes a moment).
      // (On another site's page the browser may not let it look: the link is shown anyway.)
      for (let i = 0; i < 120; i++) {
        const status = await fetch(base + own.download_path).then((r) => r.status, () => 0);
        if (status !== 202) break;
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
      const link = el('a', { href: base + own.download_path, download: `my-data-${own.id}.zip` }, 'Download your data (ZIP)');
      renderData(el('p', { role: 'status' }, link, el('span', { class: 'meta' }, ' · the link works for 24 hours')));
    } catch (error) {
      renderData(el('p', { role: 'alert' }, `Your data could not be prepared: ${error.message}`));
    }
  }

  function confirmErase() {
    const yes = el('button', { type: 'button', class: 'danger', onclick: () => erase() }, 'Yes, delete everything');
    const no = el('button', { type: 'button', onclick: () => renderData() }, 'Cancel');
    dataPanel.replaceChildren(el('h3', {}, 'My data'),
      el('p', { role: 'alert' }, 'This deletes your conversations, goals, check-ins and everything else the coach keeps about you. It cannot be undone.'),
      yes, no);
    yes.focus();
  }

  async function erase() {
    try {
      await api('/api/v1/public/me/data', { method: 'DELETE', body: { confirm: true }, token: state.token });
    } catch (error) {
      renderData(el('p', { role: 'alert' }, `Your data could not be deleted: ${error.message}`));
      return;
    }
    if (transport && transport.close) transport.close();
    inner.replaceChildren();
    state.messages.clear();
    toggleData(false);
    progressButton.hidden = true;
    store.save({ token: null, conversationId: null, lastSeq: 0, readSeq: 0 });
    Object.assign(state, { token: null, conversationId: null, lastSeq: 0, readSeq: 0, consent: undefined });
    transport = null;
    started = false;
    await start();
    inner.prepend(el('p', { class: 'msg event', role: 'status' }, 'Your data was deleted. Anything you write now starts afresh.'));
  }

  /** After the coach's first helpful answer, it asks once whether it may check in. */
  function maybeAskConsent(message) {
    if (state.consent !== null || preview || state.asking) return;
    // Helpful: grounded in the creator's material (it cites it), not a nudge or a confirmation.
    const answer = message.role === 'assistant' && !message.fallback && message.seq > 0
      && (message.citations || []).length > 0 && !(message.client_id || '').startsWith('nudge-');
    if (!answer || !state.messages.has(message.seq - 1)) return;
    state.asking = true;
    const name = state.coach ? state.coach.name : 'The coach';
    const note = el('p', {}, `May I check in with you now and then, to see how you are doing? You can change this any time with “Check-ins” at the top.`);
    const card = el('div', { class: 'consent', 'data-role': 'consent', role: 'group', 'aria-label': `${name} asks` }, note);
    const answerWith = (consent) => async () => {
      if (await setConsent(consent)) {
        card.replaceChildren(el('p', {}, consent ? 'Thank you! I will check in now and then.' : 'All right, I will not check in. You can turn check-ins on at the top.'));
      }
    };
    card.append(el('div', { class: 'prompt' },
      el('button', { type: 'button', class: 'primary', onclick: answerWith(true) }, 'Yes, please'),
      el('button', { type: 'button', onclick: answerWith(false) }, 'No, thanks')));
    inner.append(card);
    scrollDown();
  }

  function refreshReceipts() {
    inner.querySelectorAll('.msg.user').forEach((node) => {
      const seq = Number(node.dataset.seq || 0);
      const meta = node.querySelector('.receipt');
      if (meta && meta.textContent !== 'Not sent') meta.textContent = receiptText({ seq });
    });
  }

  function scrollDown() {
    log.scrollTop = log.scrollHeight;
  }

  function addMessage(message) {
    if (state.messages.has(message.seq)) return;
    state.messages.set(message.seq, message);
    if (message.client_id) state.pending.delete(message.client_id);
    if (message.role === 'assistant' || message.role === 'staff') clearDraft();
    // The stored copy of our own message takes the optimistic copy's place.
    const optimistic = message.client_id && inner.querySelector(`[data-key="${CSS.escape(message.client_id)}"]`);
    const node = renderMessage(message);
    if (optimistic) optimistic.replaceWith(node);
    else if (state.draft) state.draft.node.before(node);
    else inner.append(node);
    state.lastSeq = Math.max(state.lastSeq, message.seq);
    store.save({ lastSeq: state.lastSeq });
    refreshPrompts();
    maybeAskConsent(message);
    scrollDown();
    markRead();
    renderBadge();
  }

  // The coach's answer as it is written; the stored message replaces it.
  function onDelta(delta) {
    if (!state.draft || state.draft.replyTo !== delta.reply_to) {
      if (delta.index !== 0) return; // joined mid-answer: wait for the stored message
      clearDraft();
      const body = el('div', { class: 'body' });
      const node = el('div', { class: 'msg assistant', 'data-role': 'draft', 'aria-busy': 'true' }, body);
      inner.append(node);
      state.draft = { replyTo: delta.reply_to, text: '', next: 0, node, body };
    }
    const draft = state.draft;
    if (delta.index !== draft.next) return;
    draft.next += 1;
    draft.text += delta.text;
    draft.body.textContent = '';
    draft.body.append(...markdown(draft.text.replace(/\s*\[\d+(?:,\s*\d+)*\]/g, '')));
    typing.hidden = true;
    scrollDown();
  }

  function clearDraft() {
    if (state.draft) state.draft.node.remove();
    state.draft = null;
  }

  const typingFrom = new Map();
  function onTyping(event) {
    if (event.from === 'visitor') return;
    if (event.active) typingFrom.set(event.from, event.name); else typingFrom.delete(event.from);
    const staff = typingFrom.has('staff');
    const coach = typingFrom.has('coach') && !state.draft;
    typing.hidden = !(staff || coach);
    typing.textContent = staff ? `${typingFrom.get('staff') || 'Someone from the team'} is typing…`
      : coach ? `${state.coach ? state.coach.name : 'The coach'} is thinking…` : '';
    if (!typing.hidden) scrollDown();
  }

  function onConversation(conversation) {
    state.conversationId = conversation.id;
    state.mode = conversation.mode;
    state.staffReadSeq = Math.max(state.staffReadSeq, conversation.staff_read_seq || 0);
    store.save({ conversationId: conversation.id });
    renderStatus();
    refreshReceipts();
  }

  /** Tells the team what the end user has seen: read when the chat is in view, else delivered. */
  function markRead() {
    if (!transport || !state.conversationId || state.lastSeq <= state.readSeq) return;
    if ((!pageMode && panel.hidden) || document.hidden) {
      if (state.lastSeq > (state.deliveredSeq || 0)) {
        state.deliveredSeq = state.lastSeq;
        transport.receipt(state.lastSeq, 'delivered');
      }
      return;
    }
    state.readSeq = state.lastSeq;
    store.save({ readSeq: state.readSeq });
    transport.receipt(state.lastSeq);
    renderBadge();
  }
  document.addEventListener('visibilitychange', markRead);

  function handle(event) {
    switch (event.type) {
      case 'welcome': state.maxChars = event.max_message_chars; input.maxLength = event.max_message_chars; break;
      case 'presence': state.staffOnline = event.staff_online; renderStatus(); break;
      case 'opened': onConversation(event.conversation); host.dataset.state = 'ready'; showError(''); break;
      case 'conversation': onConversation(event.conversation); break;
      case 'message': addMessage(event.message); break;
      case 'ack': {
        const pending = state.pending.get(event.client_id);
        if (pending) pending.seq = event.seq;
        break;
      }
      case 'delta': onDelta(event); break;
      case 'typing': onTyping(event); break;
      case 'receipt':
        if (event.by === 'staff' && event.status === 'read') { state.staffReadSeq = Math.max(state.staffReadSeq, event.seq); refreshReceipts(); }
        break;
      case 'error':
        if (event.ref && state.pending.has(event.ref)) {
          const node = inner.querySelector(`[data-key="${CSS.escape(event.ref)}"] .receipt`);
          if (node) node.textContent = 'Not sent';
          state.pending.delete(event.ref);
        }
        showError(event.message);
        clearDraft();
        typingFrom.delete('coach');
        onTyping({ from: 'coach', active: false });
        break;
      default: break;
    }
  }

  // ---- transports ----
  let transport = null;

  function newClientId() {
    return (crypto.randomUUID && crypto.randomUUID()) || `${Date.now()}-${Math.random().toString(16).slice(2)}`;
  }

  function webSocketTransport() {
    let socket = null;
    let attempts = 0;
    let opened = false;
    let closed = false;
    const self = {
      kind: 'websocket',
      send(command) {
        if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(command));
      },
      message(clientId, content) {
        self.send({ type: 'send', conversation_id: state.conversationId, client_id: clientId, content });
      },
      typing(active) { if (state.conversationId) self.send({ type: 'typing', conversation_id: state.conversationId, active }); },
      receipt(seq, status = 'read') { self.send({ type: 'receipt', conversation_id: state.conversationId, seq, status }); },
      requestPerson() { self.send({ type: 'request_human', conversation_id: state.conversationId }); },
      close() { closed = true; if (socket) socket.close(); },
    };
    function connect() {
      socket = new WebSocket(`${base.replace(/^http/, 'ws')}/api/v1/live`);
      socket.onopen = () => {
        socket.send(JSON.stringify({ type: 'hello', token: state.token, protocol: 1 }));
      };
      socket.onmessage = (frame) => {
        const event = JSON.parse(frame.data);
        if (event.type === 'welcome') {
          opened = true;
          attempts = 0;
          self.send({ type: 'open', conversation_id: state.conversationId || null, after_seq: state.lastSeq });
        }
        if (event.type === 'opened') {
          handle(event);
          // Resend what was not acknowledged before the connection dropped (stored once).
          for (const [clientId, pending] of state.pending) if (!pending.seq) self.message(clientId, pending.content);
          return;
        }
        if (event.type === 'error' && event.code === 'unauthorized' && !opened) {
          closed = true;
          reset();
          return;
        }
        if (event.type === 'error' && event.code === 'origin_not_allowed') {
          closed = true;
          refused();
          return;
        }
        handle(event);
      };
      socket.onclose = () => {
        if (closed) return;
        attempts += 1;
        if (!opened && attempts >= 3) {
          // WebSockets seem blocked here (a proxy?): use the event stream instead.
          transport = eventsTransport();
          return;
        }
        host.dataset.state = 'reconnecting';
        const delay = Math.min(15000, 500 * 2 ** attempts) * (0.75 + Math.random() / 2);
        setTimeout(connect, delay);
      };
    }
    connect();
    return self;
  }

  function eventsTransport() {
    let controller = null;
    let closed = false;
    let attempts = 0;
    const token = () => state.token;
    const path = (suffix) => `/api/v1/conversations/${encodeURIComponent(state.conversationId)}${suffix}`;
    const self = {
      kind: 'events',
      async message(clientId, content) {
        try {
          const stored = await api(path('/messages'), { method: 'POST', token: token(), body: { content, client_id: clientId, background: true, stream: false } });
          handle({ type: 'ack', client_id: clientId, seq: stored.seq });
        } catch (error) {
          handle({ type: 'error', ref: clientId, message: error.message, code: error.code });
        }
      },
      typing(active) { api(path('/typing'), { method: 'POST', token: token(), body: { active } }).catch(() => {}); },
      receipt(seq, status = 'read') { api(path('/receipts'), { method: 'POST', token: token(), body: { seq, status } }).catch(() => {}); },
      requestPerson() { api(path('/handoff'), { method: 'POST', token: token() }).catch((e) => showError(e.message)); },
      close() { closed = true; if (controller) controller.abort(); },
    };
    async function listen() {
      try {
        if (!state.conversationId) {
          const conversation = await api('/api/v1/conversations', { method: 'POST', token: token() });
          state.conversationId = conversation.id;
        }
        controller = new AbortController();
        const response = await fetch(`${base}${path('/events')}?after=${state.lastSeq}`, {
          headers: { Authorization: `Bearer ${token()}`, Accept: 'text/event-stream' }, signal: controller.signal,
        });
        if (response.status === 401) { closed = true; reset(); return; }
        if (response.status === 403) { closed = true; refused(); return; }
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        attempts = 0;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
            if (!data) continue;
            const event = JSON.parse(data);
            handle(event);
            if (event.type === 'opened') {
              for (const [clientId, pending] of state.pending) if (!pending.seq) self.message(clientId, pending.content);
            }
          }
        }
      } catch (error) {
        if (closed) return;
      }
      if (closed) return;
      attempts += 1;
      host.dataset.state = 'reconnecting';
      setTimeout(listen, Math.min(15000, 500 * 2 ** attempts));
    }
    listen();
    return self;
  }

  function refused() {
    host.dataset.state = 'refused';
    console.warn(`Compañero: ${location.origin} is not an allowed origin for "${slug}"; add it in the coach's settings.`);
    root.textContent = '';
  }

  // The token is unknown (revoked, or a different server): start afresh once.
  let resets = 0;
  function reset() {
    if (resets++ > 0) { showError('This chat could not sign you in. Please reload the page.'); return; }
    store.save({ token: null, conversationId: null, lastSeq: 0, readSeq: 0 });
    state.readSeq = 0;
    state.token = null;
    state.conversationId = null;
    state.lastSeq = 0;
    transport = null;
    started = false;
    start();
  }

  let started = false;
  async function start() {
    if (started) return;
    started = true;
    try {
      if (!state.token) {
        // The browser's zone: program steps and check-ins then reach the person at their local times.
        let zone = '';
        try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ''; } catch (_) { /* old browser */ }
        const query = zone ? `?time_zone=${encodeURIComponent(zone)}` : '';
        const visitor = await api(`/api/v1/public/coaches/${encodeURIComponent(slug)}/visitors${query}`, { method: 'POST' });
        state.token = visitor.token;
        store.save({ token: visitor.token, conversationId: null, lastSeq: 0, readSeq: 0 });
        state.readSeq = 0;
      }
      await enrollFromLink();
      await loadMe();
      loadPush();
      // History is replayed from the start on each page load; lastSeq only serves reconnects.
      state.lastSeq = 0;
      transport = forceEvents || !('WebSocket' in window) ? eventsTransport() : webSocketTransport();
    } catch (error) {
      started = false;
      if (error.code === 'origin_not_allowed') refused();
      else showError(error.message);
    }
  }

  // `/c/{slug}?program={id}` (or data-program) enrols the person in that program, once.
  async function enrollFromLink() {
    const program = script.dataset.program || new URLSearchParams(location.search).get('program');
    if (!program || preview) return;
    const done = `companero-enrolled:${slug}:${program}`;
    try { if (localStorage.getItem(done)) return; } catch (_) { /* storage off */ }
    try {
      await api('/api/v1/public/me/enrollments', { method: 'POST', token: state.token, body: { program_id: program } });
    } catch (error) {
      if (error.code !== 'already_enrolled') { showError(error.message); return; }
    }
    try { localStorage.setItem(done, '1'); } catch (_) { /* storage off */ }
  }

  function submit() {
    if (send(input.value.trim())) {
      input.value = '';
      input.style.height = 'auto';
    }
  }

  /** Sends a message (typed, or a quick reply); false when it could not go yet. */
  function send(content) {
    if (!content) return false;
    if (content.length > state.maxChars) { showError(`Messages can have up to ${state.maxChars} characters.`); return false; }
    if (!transport || !state.conversationId) { showError('Connecting… try again in a moment.'); return false; }
    showError('');
    const clientId = newClientId();
    state.pending.set(clientId, { content, seq: 0 });
    const optimistic = { id: clientId, client_id: clientId, role: 'user', content, seq: 0, citations: [] };
    inner.append(renderMessage(optimistic));
    refreshPrompts();
    scrollDown();
    clearTimeout(typingTimer);
    transport.typing(false);
    transport.message(clientId, content);
    return true;
  }

  function requestPerson() {
    if (transport && state.conversationId) transport.requestPerson();
  }

  async function boot() {
    try {
      applyCoach(await api(`/api/v1/public/coaches/${encodeURIComponent(slug)}`));
    } catch (error) {
      if (error.code === 'origin_not_allowed') { refused(); document.body.append(host); return; }
      host.dataset.state = 'error';
      console.warn(`Compañero: ${error.message}`);
      if (!pageMode) return;
    }
    if (pageMode) {
      document.title = state.coach ? state.coach.name : document.title;
      root.append(panel);
    } else {
      root.append(teaser, launcher, panel);
    }
    if (state.coach) {
      greetingNode.replaceChildren(...markdown(state.coach.greeting));
      inner.prepend(greetingNode);
    }
    host.dataset.state = 'idle';
    if (preview && mount) {
      // The dashboard's preview: open, offline, with a sample question, restyled live.
      panel.hidden = false;
      launcher.setAttribute('aria-expanded', 'true');
      input.disabled = true;
      input.placeholder = 'Preview';
      inner.append(renderMessage({ id: 'sample', role: 'user', content: 'How do I get started?', seq: 1, citations: [] }));
      mount.addEventListener('companero-preview', (event) => applyCoach({ ...state.coach, ...event.detail }));
      mount.append(host);
      return;
    }
    if (session && mount) {
      // A test end user's chat inside the builder: open and live; it ends when the builder
      // is left (its element leaves the page).
      panel.hidden = false;
      launcher.setAttribute('aria-expanded', 'true');
      mount.append(host);
      start();
      const watchMount = setInterval(() => {
        if (!host.isConnected) { clearInterval(watchMount); if (transport) transport.close(); }
      }, 2000);
      return;
    }
    document.body.append(host);
    // The chat page connects at once; the widget when it is first opened (or was open before).
    if (pageMode || memory.conversationId) start();
  }

  if (document.body) boot(); else document.addEventListener('DOMContentLoaded', boot);
})();
