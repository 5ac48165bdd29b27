// Test chat: ask the coach as an end user would, and see for each answer its citations,
// confidence, how each sentence was checked against its source and the passages retrieval found.
import { api, accessToken, explain } from './api.js';
import { el, alertBox } from './ui.js';

/** Reads a Server-Sent Events response, calling `onEvent(name, data)` per event. */
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(name, JSON.parse(data.join('\n')));
    }
  }
}

const VERDICTS = {
  supported: 'Supported', repaired: 'Quoted instead', dropped: 'Left out', unsupported: 'No source',
  conversational: 'Conversation', refusal: 'Refusal', code: 'Code',
};

/** How each sentence of the model's answer was checked against the passage it cites. */
function checksDetails(checks, strictness) {
  const count = (verdict) => checks.filter((c) => c.verdict === verdict).length;
  const summary = ['supported', 'repaired', 'dropped', 'unsupported'].filter(count)
    .map((v) => `${count(v)} ${VERDICTS[v].toLowerCase()}`).join(', ') || 'no claims';
  return el('details', { class: 'answer-meta', 'data-test': 'checks', open: checks.some((c) => c.verdict === 'repaired' || c.verdict === 'dropped') },
    el('summary', {}, `Sentence checks (${strictness || 'strict'}): ${summary}`),
    ...checks.map((check) => el('div', { class: `passage check ${check.verdict}`, 'data-test': 'check', 'data-verdict': check.verdict },
      el('div', { class: 'small' }, el('strong', {}, VERDICTS[check.verdict] || check.verdict), check.marker ? ` · source [${check.marker}]` : ''),
      el('div', {}, check.sentence),
      check.delivered ? el('div', { class: 'small' }, 'Shown instead: ', check.delivered) : '',
      check.facts.length ? el('ul', { class: 'small facts' }, ...check.facts.map((fact) => el('li', { 'data-found': String(fact.found) },
        `${fact.found ? '✓' : '✗'} ${fact.kind.replace('_', ' ')} “${fact.text}”`,
        fact.evidence ? el('span', { class: 'muted' }, ` ${fact.found ? 'found in' : 'not in'} “${fact.evidence}”`) : ''))) : '',
      check.reason ? el('div', { class: 'small muted' }, check.reason) : '')));
}

function answerDetails(message) {
  const stats = message.stats || {};
  const cited = new Set(message.citations.map((c) => c.chunk_id));
  const confidence = message.confidence == null ? '–' : `${Math.round(message.confidence * 100)}%`;
  const parts = [el('div', { class: 'answer-meta', 'data-test': 'confidence' },
    message.fallback ? (stats.checks ? 'Fallback (no sentence of the answer was supported) · ' : 'Fallback (nothing relevant enough found) · ') : '',
    `Confidence ${confidence}`,
    stats.first_token_s ? ` · first word after ${stats.first_token_s.toFixed(1)} s` : '',
    stats.first_sentence_s ? ` · first checked sentence shown after ${stats.first_sentence_s.toFixed(1)} s` : '')];
  if (stats.checks && stats.checks.length) parts.push(checksDetails(stats.checks, stats.strictness));
  if (message.citations.length) {
    parts.push(el('div', { class: 'answer-meta' }, el('strong', {}, 'Citations')),
      ...message.citations.map((c) => el('div', { class: 'passage cited', 'data-test': 'citation' },
        el('div', { class: 'small' }, el('strong', {}, `[${c.marker}] ${c.document_title}`), c.page ? ` · page ${c.page}` : '', c.heading_path ? ` · ${c.heading_path}` : ''),
        el('div', {}, `“${c.snippet}”`))));
  }
  const retrieved = stats.retrieved || [];
  if (retrieved.length) {
    // A follow-up is searched with the question before it too: show what was searched.
    const queries = stats.queries || [];
    const searched = queries.length ? [el('div', { class: 'small', 'data-test': 'searched-for' },
      'Searched for ', ...queries.flatMap((q, i) => [i ? ' and ' : '', `“${q}”`]))] : [];
    // Older answers' passages carry no chunk id: those match their citations by document.
    const isCited = (p) => (p.chunk_id != null ? cited.has(p.chunk_id) : message.citations.some((c) => c.document_title === p.document_title));
    parts.push(el('details', { class: 'answer-meta' }, el('summary', {}, `Passages retrieved (${retrieved.length})`), ...searched,
      ...retrieved.map((p) => el('div', { class: `passage${isCited(p) ? ' cited' : ''}`, 'data-test': 'passage' },
        el('div', { class: 'small' }, el('strong', {}, p.document_title), p.heading_path ? ` · ${p.heading_path}` : '', ` · score ${Number(p.score).toFixed(2)}`),
        el('div', {}, p.excerpt)))));
  }
  return parts;
}

/** A question box and transcript over a test conversation of the signed-in member. */
export function askPanel() {
  const log = el('div', { class: 'chat-log', role: 'log', 'aria-live': 'polite', 'aria-label': 'Test conversation' });
  const input = el('textarea', { name: 'question', rows: '2', 'aria-label': 'Question for the coach', placeholder: 'Ask what your clients would ask…' });
  const status = el('div');
  const form = el('form', {}, status, log, el('div', { class: 'row', style: 'align-items:flex-end' }, el('div', { style: 'flex:1' }, input),
    el('button', { class: 'btn primary', type: 'submit' }, 'Ask')));
  let conversation = null;
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
  });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const question = input.value.trim();
    if (!question) return;
    status.replaceChildren();
    const button = form.querySelector('button');
    button.disabled = true;
    input.value = '';
    log.append(el('div', { class: 'bubble user' }, question));
    const answer = el('div', { class: 'bubble assistant', 'aria-busy': 'true' }, el('span', { class: 'muted' }, 'Thinking…'));
    log.append(answer);
    try {
      if (!conversation) conversation = (await api('POST', '/api/v1/conversations')).id;
      const response = await fetch(`/api/v1/conversations/${conversation}/messages`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${accessToken()}`, 'Content-Type': 'application/json', Accept: 'text/event-stream' },
        body: JSON.stringify({ content: question }),
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw Object.assign(new Error((body.error && body.error.message) || `HTTP ${response.status}`), { status: response.status });
      }
      let text = '';
      await readEvents(response, (name, data) => {
        if (name === 'delta') {
          text += data.text;
          answer.replaceChildren(text);
        } else if (name === 'message') {
          answer.removeAttribute('aria-busy');
          answer.setAttribute('data-role', 'answer');
          answer.replaceChildren(data.content, ...answerDetails(data));
        } else if (name === 'error') {
          answer.replaceChildren(alertBox(data.error.message));
        }
      });
    } catch (error) {
      answer.remove();
      status.replaceChildren(alertBox(error.status ? error.message : explain(error)));
    } finally {
      button.disabled = false;
      log.scrollTop = log.scrollHeight;
      input.focus();
    }
  });
  return form;
}

export async function testChat(main) {
  main.append(el('h1', {}, 'Test chat'),
    el('p', { class: 'muted' }, 'Ask as your clients would. Each answer shows its sources, how confident the coach is, and what it found.'),
    el('section', { class: 'card' }, askPanel()));
}
