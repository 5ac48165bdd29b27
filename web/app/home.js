// Overview: where the coach is reachable, and what it knows.
import { get } from './api.js';
import { el, copyButton } from './ui.js';

export function chatLink(slug) {
  return `${location.origin}/c/${slug}`;
}

export function widgetSnippet(slug) {
  return `<script src="${location.origin}/widget.js" data-coach="${slug}" async></script>`;
}

/** The chat-page link and the widget snippet, each with a copy button. */
export function shareCard(slug, origins) {
  return el('section', { class: 'card stack', 'aria-labelledby': 'share-title' },
    el('h2', { id: 'share-title' }, 'Put your coach in front of people'),
    el('div', {},
      el('h3', {}, 'Chat page'),
      el('div', { class: 'row' }, el('a', { href: chatLink(slug), target: '_blank', rel: 'noopener', 'data-test': 'chat-link' }, chatLink(slug)),
        copyButton(() => chatLink(slug), 'Copy link'))),
    el('div', {},
      el('h3', {}, 'Website widget'),
      el('p', { class: 'muted small' }, 'Paste this line into your website, just before </body>.'),
      el('code', { class: 'code', 'data-test': 'snippet' }, widgetSnippet(slug)),
      el('div', { class: 'row', style: 'margin-top:8px' }, copyButton(() => widgetSnippet(slug), 'Copy snippet')),
      origins && origins.length === 0
        ? el('p', { class: 'small muted', style: 'margin-top:8px' }, 'The widget only works on websites you allow. Add yours under ',
          el('a', { href: '#/settings' }, 'Coach settings'), '.')
        : null));
}

export async function home(main, { user }) {
  const [coach, tenant, documents, ready] = await Promise.all([
    get('/api/v1/coach'), get('/api/v1/tenant'), get('/api/v1/documents?limit=1'),
    fetch('/readyz').then((r) => r.json()).catch(() => null),
  ]);
  const models = ready && ready.components
    ? ['llm', 'embedder'].map((name) => {
      const component = ready.components[name] || {};
      return el('li', {}, `${name === 'llm' ? 'Chat model' : 'Embedder'}: `,
        el('span', { class: `badge ${component.ready ? 'ready' : 'processing'}` }, component.ready ? 'ready' : (component.state || 'not ready')),
        component.model ? ` ${component.model}` : '');
    })
    : [];
  main.append(
    el('h1', {}, `Hello, ${user.full_name.split(' ')[0]}`),
    el('div', { class: 'grid' },
      el('section', { class: 'card' }, el('h2', {}, coach.name),
        el('p', { class: 'muted' }, `${documents.total} document${documents.total === 1 ? '' : 's'} in the knowledge base.`),
        el('div', { class: 'row' }, el('a', { class: 'btn', href: '#/knowledge' }, 'Add documents'), el('a', { class: 'btn', href: '#/test' }, 'Try it'))),
      el('section', { class: 'card' }, el('h2', {}, 'This server'), el('ul', {}, models))),
    el('div', { style: 'margin-top:16px' }, shareCard(coach.slug, tenant.allowed_origins)));
}
