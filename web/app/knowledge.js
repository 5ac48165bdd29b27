// Knowledge: upload (several files, drag and drop, progress), live status, collections and
// tags, search as the coach sees it, re-ingest and delete.
import { api, get, upload, explain } from './api.js';
import { el, field, toast, confirmAction, alertBox } from './ui.js';

const LIVE = ['queued', 'processing'];

function statusBadge(document) {
  const label = document.status === 'processing'
    ? `processing ${Math.round(document.progress * 100)}%`
    : document.status;
  return el('span', { class: `badge ${document.status}`, 'data-status': document.status }, label);
}

/** A drop zone and file picker that uploads each file with its own progress bar. */
export function uploader(onUploaded) {
  const list = el('ul', { class: 'stack', style: 'list-style:none;padding:0;margin:16px 0 0', 'aria-label': 'Uploads' });
  const picker = el('input', { type: 'file', multiple: true, class: 'sr', id: 'file-picker',
    accept: '.pdf,.docx,.html,.htm,.md,.markdown,.txt,text/plain,application/pdf' });
  const zone = el('div', { class: 'drop' },
    el('p', {}, 'Drop files here, or ', el('label', { for: 'file-picker', class: 'btn small', style: 'display:inline-block;cursor:pointer', tabindex: '0',
      onkeydown: (event) => { if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); picker.click(); } } }, 'choose files')),
    el('p', { class: 'muted small' }, 'PDF, Word (.docx), HTML, Markdown, text'), picker);
  const send = (files) => {
    for (const file of files) {
      const bar = el('span');
      const state = el('span', { class: 'small muted' }, 'uploading…');
      const row = el('li', { class: 'row', 'data-file': file.name }, el('strong', {}, file.name), el('div', { class: 'progress', role: 'progressbar', 'aria-label': `Upload of ${file.name}` }, bar), state);
      list.append(row);
      upload(file, (share) => { bar.style.width = `${Math.round(share * 100)}%`; })
        .then((document) => {
          bar.style.width = '100%';
          state.replaceChildren('uploaded, ', statusBadge(document));
          onUploaded(document);
          follow(document.id, state);
        })
        .catch((error) => { state.replaceChildren(el('span', { class: 'badge failed' }, 'refused'), ' ', explain(error)); });
    }
  };
  picker.addEventListener('change', () => { send([...picker.files]); picker.value = ''; });
  zone.addEventListener('dragover', (event) => { event.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (event) => { event.preventDefault(); zone.classList.remove('over'); send([...event.dataTransfer.files]); });
  return el('div', {}, zone, list);
}

/** Polls one document until it is ready or failed, showing its state in `node`. */
async function follow(id, node) {
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    if (!node.isConnected) return;
    let document;
    try { document = await get(`/api/v1/documents/${id}`); } catch { return; }
    node.replaceChildren(statusBadge(document), document.error ? ` ${document.error}` : '');
    if (!LIVE.includes(document.status)) return;
  }
}

export async function knowledge(main) {
  let filter = '';
  const table = el('tbody');
  const count = el('p', { class: 'muted' });
  const collections = el('select', { 'aria-label': 'Collection' });
  let timer = null;

  async function refresh() {
    clearTimeout(timer);
    const query = filter ? `&collection=${encodeURIComponent(filter)}` : '';
    const page = await get(`/api/v1/documents?limit=100${query}`);
    count.textContent = `${page.total} document${page.total === 1 ? '' : 's'}`;
    table.replaceChildren(...page.documents.map(row));
    if (!page.documents.length) table.append(el('tr', {}, el('td', { colspan: '5', class: 'muted' }, 'No documents yet. Upload your first ones above.')));
    const names = (await get('/api/v1/collections')).collections || [];
    collections.replaceChildren(el('option', { value: '' }, 'All collections'),
      ...names.map((c) => el('option', { value: c.name, selected: c.name === filter }, `${c.name} (${c.documents})`)));
    // Live status: look again while something is being read.
    if (page.documents.some((d) => LIVE.includes(d.status)) && main.isConnected) timer = setTimeout(refresh, 1500);
  }

  function row(document) {
    const tags = el('input', { type: 'text', value: document.tags.join(', '), 'aria-label': `Tags of ${document.title}`, placeholder: 'tags, comma separated' });
    const collection = el('input', { type: 'text', value: document.collection || '', 'aria-label': `Collection of ${document.title}`, placeholder: 'collection' });
    const save = async () => {
      try {
        await api('PATCH', `/api/v1/documents/${document.id}`, {
          collection: collection.value.trim() || null,
          tags: tags.value.split(',').map((t) => t.trim()).filter(Boolean),
        });
        toast('Saved.');
        refresh();
      } catch (error) { toast(explain(error), 'error'); }
    };
    collection.addEventListener('change', save);
    tags.addEventListener('change', save);
    const details = [document.page_count ? `${document.page_count} pages` : null, `${document.chunk_count} passage${document.chunk_count === 1 ? '' : 's'}`].filter(Boolean).join(' · ');
    return el('tr', { 'data-document': document.title },
      el('td', {}, el('strong', {}, document.title), el('div', { class: 'small muted' }, `${document.filename} · ${details}`)),
      el('td', {}, statusBadge(document), document.error ? el('div', { class: 'small', style: 'color:var(--danger)' }, document.error) : null),
      el('td', {}, collection),
      el('td', {}, tags),
      el('td', {}, el('div', { class: 'row' },
        el('button', { class: 'btn small', type: 'button', onclick: async () => {
          try { await api('POST', `/api/v1/documents/${document.id}/reingest`); toast(`Reading ${document.title} again.`); refresh(); } catch (error) { toast(explain(error), 'error'); }
        } }, 'Re-ingest'),
        el('button', { class: 'btn small danger', type: 'button', onclick: async () => {
          if (!await confirmAction(`Delete “${document.title}”? The coach will stop using it.`)) return;
          try { await api('DELETE', `/api/v1/documents/${document.id}`); toast('Deleted.'); refresh(); } catch (error) { toast(explain(error), 'error'); }
        } }, 'Delete'))));
  }

  collections.addEventListener('change', () => { filter = collections.value; refresh(); });

  const query = el('input', { type: 'search', name: 'query', placeholder: 'How long do refunds take?' });
  const results = el('div', { class: 'stack', 'aria-live': 'polite' });
  const search = el('form', { role: 'search' }, field('Search the knowledge base', query, 'Shows the passages the coach would read for this question.'),
    el('button', { class: 'btn', type: 'submit' }, 'Search'), results);
  search.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!query.value.trim()) return;
    try {
      const found = await api('POST', '/api/v1/search', { query: query.value, limit: 5 });
      results.replaceChildren(...(found.results.length ? found.results.map((hit) => el('div', { class: 'passage cited' },
        el('div', { class: 'small' }, el('strong', {}, hit.document_title), hit.heading_path ? ` · ${hit.heading_path}` : '',
          hit.page ? ` · page ${hit.page}` : '', ` · score ${hit.score.toFixed(2)}`),
        el('div', {}, hit.text.slice(0, 400)))) : [el('p', { class: 'muted' }, 'Nothing relevant: the coach would say it does not know.')]));
    } catch (error) {
      results.replaceChildren(alertBox(explain(error)));
    }
  });

  main.append(el('h1', {}, 'Knowledge'),
    el('section', { class: 'card' }, el('h2', {}, 'Add documents'), uploader(() => refresh())),
    el('section', { class: 'card', style: 'margin-top:16px' },
      el('div', { class: 'row', style: 'justify-content:space-between' }, el('h2', {}, 'Documents'), collections), count,
      el('table', { class: 'table' }, el('thead', {}, el('tr', {}, ['Document', 'Status', 'Collection', 'Tags', ''].map((h) => el('th', { scope: 'col' }, h)))), table)),
    el('section', { class: 'card', style: 'margin-top:16px' }, search));
  await refresh();
  return () => clearTimeout(timer);
}
