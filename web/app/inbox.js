// Inbox: end users' conversations, live. Staff read transcripts with citations and confidence,
// take a conversation over, reply as themselves and hand it back, over the live protocol.
import { get, accessToken, explain } from './api.js';
import { el, toast } from './ui.js';

const FILTERS = [['all', 'All'], ['needs_human', 'Asking for a person'], ['human', 'With a person'], ['ai', 'With the coach'], ['low_confidence', 'Low confidence']];

/** A staff connection to the live protocol that reconnects by itself. */
function liveConnection(onEvent) {
  let socket = null;
  let closed = false;
  let attempts = 0;
  const queue = [];
  const connect = async () => {
    await get('/api/v1/auth/me').catch(() => {}); // refreshes the access token if it is about to lapse
    socket = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/api/v1/live`);
    socket.onopen = () => socket.send(JSON.stringify({ type: 'hello', token: accessToken() }));
    socket.onmessage = (frame) => {
      const event = JSON.parse(frame.data);
      if (event.type === 'welcome') { attempts = 0; while (queue.length) socket.send(queue.shift()); }
      onEvent(event);
    };
    socket.onclose = () => {
      if (closed) return;
      attempts += 1;
      setTimeout(connect, Math.min(10000, 500 * 2 ** attempts));
    };
  };
  connect();
  return {
    send(command) {
      const text = JSON.stringify(command);
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(text); else queue.push(text);
    },
    close() { closed = true; if (socket) socket.close(); },
  };
}

function who(message) {
  return { user: 'End user', assistant: 'Coach (AI)', staff: message.author_name || 'Team' }[message.role] || '';
}

/** Where a message was written or delivered, when it is not the website. */
function channelBadge(channel) {
  if (!channel || channel === 'web') return '';
  const names = { telegram: 'Telegram', whatsapp: 'WhatsApp' };
  return el('span', { class: 'badge', 'data-channel': channel, style: 'margin-left:6px' }, names[channel] || channel);
}

function renderMessage(message) {
  if (message.role === 'event') return el('div', { class: 'small muted', style: 'text-align:center', 'data-seq': message.seq }, message.content);
  const details = [];
  if (message.role === 'assistant') {
    const confidence = message.confidence == null ? '–' : `${Math.round(message.confidence * 100)}%`;
    details.push(el('div', { class: 'answer-meta' }, message.fallback ? 'Fallback · ' : '', `Confidence ${confidence}`));
    details.push(...message.citations.map((c) => el('div', { class: 'passage cited' },
      el('div', { class: 'small' }, el('strong', {}, `[${c.marker}] ${c.document_title}`), c.page ? ` · page ${c.page}` : ''), el('div', { class: 'small' }, `“${c.snippet}”`))));
  }
  return el('div', { class: `bubble ${message.role === 'user' ? 'assistant' : 'team'}`, 'data-seq': message.seq, 'data-role': message.role },
    el('div', { class: 'small', style: 'font-weight:650' }, who(message), channelBadge(message.channel)), message.content, ...details);
}

export async function inbox(main, { user, params, navigate }) {
  const filter = params.get('filter') || 'all';
  const visitor = params.get('visitor');
  const since = params.get('since') || '';
  const selected = params.get('c');
  const list = el('ul', { class: 'stack', style: 'list-style:none;padding:0;margin:0', 'aria-label': 'Conversations' });
  const panel = el('section', { class: 'card', 'aria-live': 'polite' }, el('p', { class: 'muted' }, 'Choose a conversation.'));
  const route = (changes) => {
    const next = new URLSearchParams({ filter, since, ...(visitor ? { visitor } : {}), ...(selected ? { c: selected } : {}), ...changes });
    for (const [key, value] of [...next]) if (!value) next.delete(key);
    navigate(`inbox?${next}`);
  };
  const filterSelect = el('select', { 'aria-label': 'Show', onchange: () => route({ filter: filterSelect.value, c: '' }) },
    FILTERS.map(([value, label]) => el('option', { value, selected: value === filter }, label)));
  const sinceInput = el('input', { type: 'date', value: since, 'aria-label': 'Active since', onchange: () => route({ since: sinceInput.value, c: '' }) });

  let state = { conversation: null, messages: [], typing: null };
  const live = liveConnection((event) => {
    if (event.type === 'message' || event.type === 'conversation' || event.type === 'visitor_presence') scheduleList();
    const conversationId = event.conversation ? event.conversation.id : event.message ? event.message.conversation_id : event.conversation_id;
    if (!state.conversation || conversationId !== state.conversation.id) return;
    if (event.type === 'message') {
      if (!state.messages.some((m) => m.seq === event.message.seq)) { state.messages.push(event.message); renderTranscript(); }
      markRead();
    } else if (event.type === 'conversation') {
      state.conversation = event.conversation;
      renderTranscript();
    } else if (event.type === 'typing' && event.from === 'visitor') {
      state.typing = event.active;
      renderTranscript();
    } else if (event.type === 'error') {
      toast(event.message, 'error');
    }
  });

  let listTimer = null;
  function scheduleList() { clearTimeout(listTimer); listTimer = setTimeout(loadList, 300); }
  async function loadList() {
    const query = new URLSearchParams({ filter, limit: '100' });
    if (visitor) query.set('visitor', visitor);
    if (since) query.set('since', since);
    const { conversations } = await get(`/api/v1/inbox?${query}`);
    list.replaceChildren(...conversations.map((item) => {
      const c = item.conversation;
      const preview = item.last_message ? item.last_message.content : 'No messages yet';
      return el('li', {}, el('a', { class: 'card', href: `#/inbox?${new URLSearchParams({ filter, ...(visitor ? { visitor } : {}), c: c.id })}`,
        style: `display:block;padding:12px 14px;text-decoration:none;color:inherit;${c.id === selected ? 'border-color:var(--brand)' : ''}`,
        'aria-current': c.id === selected ? 'true' : false, 'data-conversation': c.id },
        el('div', { class: 'row', style: 'justify-content:space-between' },
          el('strong', {}, item.end_user_name || `End user ${(item.end_user_id || item.visitor_id).slice(0, 6)}`, item.visitor_online ? el('span', { class: 'badge ready', style: 'margin-left:6px' }, 'online') : '', channelBadge(item.conversation.channel)),
          item.unread ? el('span', { class: 'badge processing', 'data-test': 'unread' }, `${item.unread} new`) : ''),
        el('div', { class: 'small muted', style: 'overflow:hidden;text-overflow:ellipsis;white-space:nowrap' }, preview),
        el('div', { class: 'small' },
          c.handoff_requested_at && c.mode === 'ai' ? el('span', { class: 'badge failed' }, 'wants a person') : '',
          c.mode === 'human' ? el('span', { class: 'badge' }, `with ${c.assigned_name || 'a person'}`) : el('span', { class: 'badge' }, 'coach answering'))));
    }));
    if (!conversations.length) list.append(el('li', { class: 'muted' }, 'No conversations here yet.'));
  }

  function markRead() {
    const last = state.messages[state.messages.length - 1];
    if (last && state.conversation) live.send({ type: 'receipt', conversation_id: state.conversation.id, seq: last.seq, status: 'read' });
  }

  function renderTranscript() {
    const c = state.conversation;
    if (!c) return;
    const mine = c.mode === 'human' && c.assigned_user_id === user.id;
    const input = el('textarea', { name: 'reply', rows: '2', 'aria-label': 'Reply to the end user', disabled: !mine,
      placeholder: mine ? 'Write your reply…' : 'Take the conversation over to reply' });
    const reply = el('form', { class: 'row', style: 'align-items:flex-end;margin-top:12px' }, el('div', { style: 'flex:1' }, input),
      el('button', { class: 'btn primary', type: 'submit', disabled: !mine }, 'Send'));
    reply.addEventListener('submit', (event) => {
      event.preventDefault();
      const content = input.value.trim();
      if (!content) return;
      live.send({ type: 'send', conversation_id: c.id, client_id: crypto.randomUUID(), content });
      input.value = '';
    });
    input.addEventListener('input', () => live.send({ type: 'typing', conversation_id: c.id, active: input.value.length > 0 }));
    const action = c.mode === 'human'
      ? el('button', { class: 'btn', type: 'button', onclick: () => live.send({ type: 'handback', conversation_id: c.id }) }, 'Hand back to the coach')
      : el('button', { class: 'btn primary', type: 'button', onclick: () => live.send({ type: 'takeover', conversation_id: c.id }) }, 'Take over');
    const transcript = el('div', { class: 'chat-log', role: 'log', 'aria-label': 'Transcript' }, state.messages.map(renderMessage),
      state.typing ? el('div', { class: 'small muted' }, 'The end user is typing…') : null);
    panel.replaceChildren(
      el('div', { class: 'row', style: 'justify-content:space-between' },
        el('h2', { style: 'margin:0' }, c.mode === 'human' ? `With ${c.assigned_name || 'a person'}` : 'The coach is answering'), action),
      c.visitor_id ? el('p', { class: 'small' }, el('a', { href: `#/inbox?visitor=${encodeURIComponent(c.visitor_id)}` }, 'All conversations of this end user, on every channel')) : null,
      transcript, reply);
    transcript.scrollTop = transcript.scrollHeight;
  }

  main.append(el('h1', {}, visitor ? 'Conversations of one end user' : 'Inbox'),
    el('div', { class: 'row', style: 'margin-bottom:16px' }, filterSelect, el('label', { style: 'margin:0;font-weight:400' }, 'Active since ', sinceInput), visitor ? el('a', { href: '#/inbox' }, 'Everyone') : null),
    el('div', { class: 'split inbox' }, el('div', {}, list), panel));
  await loadList();
  if (selected) {
    try {
      const [conversation, history] = await Promise.all([get(`/api/v1/conversations/${selected}`), get(`/api/v1/conversations/${selected}/messages`)]);
      state = { conversation, messages: history.messages, typing: false };
      const last = history.messages.length ? history.messages[history.messages.length - 1].seq : 0;
      // Anything newer than the history just read arrives through the live connection.
      live.send({ type: 'open', conversation_id: selected, after_seq: last });
      renderTranscript();
      markRead();
    } catch (error) {
      panel.replaceChildren(el('div', { class: 'alert error', role: 'alert' }, explain(error)));
    }
  }
  return () => { live.close(); clearTimeout(listTimer); };
}
