// The instance owner's view: every creator on this server, the server's health and its audit log.
import { api, get, explain } from './api.js';
import { el, alertBox, toast, confirmAction } from './ui.js';
import { requirementSwitch } from './security.js';

export async function owner(main, { user, navigate }) {
  if (!user.is_owner) {
    main.append(el('h1', {}, 'This server'), alertBox('Only the owner of this server sees this page.', 'warn'));
    return;
  }
  const [tenants, ready, instance, audit] = await Promise.all([
    get('/api/v1/admin/tenants'), fetch('/readyz').then((r) => r.json()), get('/api/v1/instance'), get('/api/v1/admin/audit-log?limit=50'),
  ]);
  const models = el('tbody');
  let timer = null;
  async function loadModels() {
    clearTimeout(timer);
    const list = (await get('/api/v1/admin/models')).models;
    models.replaceChildren(...list.map((m) => {
      const d = m.download;
      const share = d && d.total_bytes ? Math.min(1, d.done_bytes / d.total_bytes) : 0;
      const status = m.installed ? el('span', { class: 'badge ready' }, 'installed')
        : d && d.state === 'downloading' ? el('div', { class: 'row' }, el('div', { class: 'progress', role: 'progressbar', 'aria-label': `Download of ${m.name}`,
          'aria-valuenow': String(Math.round(share * 100)) }, el('span', { style: `width:${Math.round(share * 100)}%` })), `${Math.round(share * 100)}%`)
          : d && d.state === 'failed' ? el('span', { class: 'badge failed', title: d.error }, `failed: ${d.error}`)
            : el('button', { class: 'btn small', type: 'button', onclick: async () => {
              try { await api('POST', `/api/v1/admin/models/${encodeURIComponent(m.name)}/pull`); loadModels(); } catch (error) { toast(explain(error), 'error'); }
            } }, 'Download');
      return el('tr', { 'data-model': m.name }, el('td', {}, el('strong', {}, m.name), m.default ? el('span', { class: 'badge', style: 'margin-left:6px' }, 'default') : null,
        el('div', { class: 'small muted' }, m.description)), el('td', {}, m.kind), el('td', {}, `${m.size_mb} MB`), el('td', {}, status));
    }));
    if (list.some((m) => m.download && m.download.state === 'downloading') && models.isConnected) timer = setTimeout(loadModels, 1000);
  }
  const components = Object.entries(ready.components).map(([name, c]) => el('tr', {},
    el('td', {}, name), el('td', {}, el('span', { class: `badge ${c.ready ? 'ready' : 'failed'}` }, c.ready ? 'ready' : (c.state || 'not ready'))),
    el('td', { class: 'small' }, c.model || c.message || (c.schema_version != null ? `schema ${c.schema_version}` : ''))));
  const policy = el('select', { 'aria-label': 'Who may sign up' },
    [['open', 'Anyone may sign up'], ['invite', 'By invitation only'], ['closed', 'Nobody']].map(([v, label]) => el('option', { value: v, selected: v === instance.signup }, label)));
  policy.addEventListener('change', async () => {
    try { await api('PATCH', '/api/v1/admin/instance', { signup: policy.value }); toast('Sign-up policy saved.'); } catch (error) { toast(explain(error), 'error'); }
  });
  const act = (label, kind, question, method, path) => el('button', { class: `btn small ${kind}`, type: 'button', onclick: async () => {
    if (question && !await confirmAction(question, label)) return;
    try { await api(method, path); toast(`${label}: done.`); navigate('server'); } catch (error) { toast(explain(error), 'error'); }
  } }, label);
  const actions = (t) => (t.id === user.tenant.id ? el('span', { class: 'small muted' }, 'yours') : el('div', { class: 'row' },
    t.suspended_at
      ? act('Resume', '', null, 'POST', `/api/v1/admin/tenants/${t.id}/resume`)
      : act('Suspend', 'danger', `Suspend “${t.name}”? Its team is signed out and its coach stops answering.`, 'POST', `/api/v1/admin/tenants/${t.id}/suspend`),
    act('Delete', 'danger', `Delete “${t.name}” with all its documents and conversations? This cannot be undone.`, 'DELETE', `/api/v1/admin/tenants/${t.id}`)));
  const table = (head, rows) => el('table', { class: 'table' }, el('thead', {}, el('tr', {}, head.map((h) => el('th', { scope: 'col' }, h)))), el('tbody', {}, rows));
  main.append(el('h1', {}, 'This server'),
    el('section', { class: 'card' }, el('h2', {}, 'Health'), table(['Component', 'State', 'Detail'], components),
      el('p', { class: 'small muted' }, `Compañero ${instance.version}`),
      el('div', { class: 'field' }, el('label', {}, 'Who may sign up'), policy),
      requirementSwitch('/api/v1/admin/mfa-requirement', instance.require_mfa, 'every account on this server')),
    el('section', { class: 'card', style: 'margin-top:16px' }, el('h2', {}, `Creators (${tenants.tenants.length})`),
      table(['Name', 'Chat page', 'Members', 'Since', ''], tenants.tenants.map((t) => el('tr', { 'data-tenant': t.name }, el('td', {}, t.name,
        t.suspended_at ? el('span', { class: 'badge failed', style: 'margin-left:6px' }, 'suspended') : null),
        el('td', {}, el('a', { href: `/c/${t.coach_slug}`, target: '_blank', rel: 'noopener' }, `/c/${t.coach_slug}`)), el('td', {}, String(t.members)),
        el('td', { class: 'small' }, t.created_at.slice(0, 10)), el('td', {}, actions(t)))))),
    el('section', { class: 'card', style: 'margin-top:16px' }, el('h2', {}, 'Models'),
      el('p', { class: 'small muted' }, 'Downloaded models are used when the server starts with them (companero serve --llm NAME --embedder NAME), or by default for the catalog defaults.'),
      el('table', { class: 'table' }, el('thead', {}, el('tr', {}, ['Model', 'Kind', 'Size', ''].map((h) => el('th', { scope: 'col' }, h)))), models)),
    el('section', { class: 'card', style: 'margin-top:16px' }, el('h2', {}, 'Audit log (all creators)'),
      table(['When', 'Who', 'What'], audit.entries.map((e) => el('tr', {}, el('td', { class: 'small' }, e.created_at.replace('T', ' ').slice(0, 19)), el('td', {}, e.actor), el('td', {}, el('code', {}, e.action)))))));
  await loadModels();
  return () => clearTimeout(timer);
}
