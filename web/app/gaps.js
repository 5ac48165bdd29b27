// Knowledge gaps: what end users asked that the coach could not answer, grouped by meaning,
// each one click away from an answer the coach will use.
import { api, get, upload, explain } from './api.js';
import { el, field, toast, alertBox, busy } from './ui.js';

export async function gaps(main) {
  const list = el('div', { class: 'stack' });
  main.append(el('h1', {}, 'Knowledge gaps'),
    el('p', { class: 'muted' }, 'Questions your coach could not answer from your material. Answer them here, or ',
      el('a', { href: '#/knowledge' }, 'upload a document'), ' that covers them.'), list);

  async function load() {
    const { groups } = await get('/api/v1/knowledge-gaps/groups');
    list.replaceChildren(...groups.map(card));
    if (!groups.length) list.append(el('section', { class: 'card' }, el('p', { class: 'muted', style: 'margin:0' }, 'No open gaps. Your coach could answer everything it was asked.')));
  }

  function card(group) {
    const answer = el('textarea', { name: 'answer', rows: '4' });
    const form = el('form', { hidden: true }, el('div', { class: 'status' }),
      field('Your answer', answer, 'Saved as a document in the “Answers” collection; the coach uses it as soon as it is read.'),
      el('div', { class: 'row' }, el('button', { class: 'btn primary', type: 'submit' }, 'Save answer'),
        el('button', { class: 'btn', type: 'button', onclick: () => { form.hidden = true; open.hidden = false; } }, 'Cancel')));
    const open = el('button', { class: 'btn', type: 'button', onclick: () => { form.hidden = false; open.hidden = true; answer.focus(); } }, 'Write an answer');
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      if (!answer.value.trim()) return;
      busy(form, async () => {
        try {
          const text = `# ${group.question}\n\n${answer.value.trim()}\n`;
          const file = new File([text], 'answer.md', { type: 'text/markdown' });
          const document = await upload(file, () => {}, { title: `Answer: ${group.question}`.slice(0, 200), collection: 'Answers' });
          await api('POST', '/api/v1/knowledge-gaps/resolve', { gap_ids: group.gap_ids, document_id: document.id });
          toast('Answer saved. The coach will use it in a moment.');
          load();
        } catch (error) {
          form.querySelector('.status').replaceChildren(alertBox(explain(error)));
        }
      });
    });
    const others = group.questions.slice(1, 4);
    return el('section', { class: 'card', 'data-gap': group.question },
      el('div', { class: 'row', style: 'justify-content:space-between' }, el('h2', { style: 'margin:0' }, group.question),
        el('span', { class: 'badge processing' }, `asked ${group.count}×`)),
      el('p', { class: 'small muted' }, `Last asked ${group.last_asked_at.replace('T', ' ').slice(0, 16)} UTC · best match ${Math.round(group.best_score * 100)}%`),
      others.length ? el('p', { class: 'small' }, 'Also asked as: ', others.map((q) => `“${q}”`).join(', ')) : null,
      open, form);
  }
  await load();
}
