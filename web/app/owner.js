// The instance owner's view: every creator on this server, the server's health and its audit log.
import { get } from './api.js';
import { el, alertBox } from './ui.js';

export async function owner(main, { user }) {
  if (!user.is_owner) {
    main.append(el('h1', {}, 'This server'), alertBox('Only the owner of this server sees this page.', 'warn'));
    return;
  }
  const [tenants, ready, instance, audit] = await Promise.all([
    get('/api/v1/admin/tenants'), fetch('/readyz').then((r) => r.json()), get('/api/v1/instance'), get('/api/v1/admin/audit-log?limit=50'),
  ]);
  const components = Object.entries(ready.components).map(([name, c]) => el('tr', {},
    el('td', {}, name), el('td', {}, el('span', { class: `badge ${c.ready ? 'ready' : 'failed'}` }, c.ready ? 'ready' : (c.state || 'not ready'))),
    el('td', { class: 'small' }, c.model || c.message || (c.schema_version != null ? `schema ${c.schema_version}` : ''))));
  const table = (head, rows) => el('table', { class: 'table' }, el('thead', {}, el('tr', {}, head.map((h) => el('th', { scope: 'col' }, h)))), el('tbody', {}, rows));
  main.append(el('h1', {}, 'This server'),
    el('section', { class: 'card' }, el('h2', {}, 'Health'), table(['Component', 'State', 'Detail'], components),
      el('p', { class: 'small muted' }, `Compañero ${instance.version} · sign-up: ${instance.signup} (set with companero serve --signup)`)),
    el('section', { class: 'card', style: 'margin-top:16px' }, el('h2', {}, `Creators (${tenants.tenants.length})`),
      table(['Name', 'Chat page', 'Members', 'Since'], tenants.tenants.map((t) => el('tr', {}, el('td', {}, t.name),
        el('td', {}, el('a', { href: `/c/${t.coach_slug}`, target: '_blank', rel: 'noopener' }, `/c/${t.coach_slug}`)), el('td', {}, String(t.members)), el('td', { class: 'small' }, t.created_at.slice(0, 10)))))),
    el('section', { class: 'card', style: 'margin-top:16px' }, el('h2', {}, 'Audit log (all creators)'),
      table(['When', 'Who', 'What'], audit.entries.map((e) => el('tr', {}, el('td', { class: 'small' }, e.created_at.replace('T', ' ').slice(0, 19)), el('td', {}, e.actor), el('td', {}, el('code', {}, e.action)))))));
}
