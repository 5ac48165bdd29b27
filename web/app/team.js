// Team and keys: members and their roles (and reset links for them), invitations, API keys (shown
// once), the audit log.
import { api, get, explain } from './api.js';
import { el, field, toast, confirmAction, alertBox, busy, copyButton } from './ui.js';
import { requirementSwitch } from './security.js';

const ROLES = [['analyst', 'Analyst: reads'], ['coach', 'Coach: answers conversations'], ['admin', 'Admin: everything']];
const roleSelect = (name, value, label) => el('select', { name, 'aria-label': label }, ROLES.map(([v, text]) => el('option', { value: v, selected: v === value }, text)));

/** ' (until 14:05)' for a time stamp, in the reader's clock. */
function until(timestamp) {
  const time = new Date(timestamp);
  return Number.isNaN(time.getTime()) ? '' : ` (until ${time.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })})`;
}

export async function team(main, { user }) {
  if (user.role !== 'admin') {
    main.append(el('h1', {}, 'Team and keys'), alertBox('Only admins manage the team and API keys.', 'warn'));
    return;
  }
  const members = el('tbody');
  const keys = el('tbody');
  const audit = el('tbody');
  const [instance, tenant] = await Promise.all([get('/api/v1/instance').catch(() => ({})), get('/api/v1/tenant')]);
  const mails = instance.email !== false;
  // A reset link made for a member: shown here once.
  const resetStatus = el('div', { role: 'status' });

  async function makeResetLink(m) {
    try {
      const { link, expires_at: expires } = await api('POST', `/api/v1/team/${m.user_id}/reset-link`);
      resetStatus.replaceChildren(el('div', { class: 'alert ok' },
        `A link for ${m.full_name} to choose a new password. It works once, for one hour${until(expires)}, and is shown only now: send it to them privately. `,
        el('code', { 'data-test': 'reset-link' }, link), ' ', copyButton(() => link, 'Copy link')));
      resetStatus.scrollIntoView({ block: 'nearest' });
    } catch (error) { toast(explain(error), 'error'); }
  }

  function memberActions(m) {
    if (m.user_id === user.id) return el('span', { class: 'small muted' }, 'you');
    return el('div', { class: 'row', style: 'gap:8px' },
      el('button', { class: 'btn small', type: 'button', 'aria-label': `Reset link for ${m.full_name}`, onclick: () => makeResetLink(m) }, 'Reset link'),
      el('button', { class: 'btn small danger', type: 'button', 'aria-label': `Remove ${m.full_name}`, onclick: async () => {
        if (!await confirmAction(`Remove ${m.full_name} from the team?`, 'Remove')) return;
        try { await api('DELETE', `/api/v1/team/${m.user_id}`); toast('Removed.'); load(); } catch (error) { toast(explain(error), 'error'); }
      } }, 'Remove'));
  }

  function invitationRow(i) {
    return el('tr', { 'data-invitation': i.email },
      el('td', {}, i.email, el('div', { class: 'small muted' }, `invited · until ${i.expires_at.slice(0, 10)}`)), el('td', {}, i.role),
      el('td', {}, el('button', { class: 'btn small danger', type: 'button', 'aria-label': `Revoke the invitation for ${i.email}`, onclick: async () => {
        if (!await confirmAction(`Revoke the invitation for ${i.email}? Its link stops working.`, 'Revoke')) return;
        try { await api('DELETE', `/api/v1/team/invitations/${i.id}`); toast('Invitation revoked.'); load(); } catch (error) { toast(explain(error), 'error'); }
      } }, 'Revoke')));
  }

  async function load() {
    const [teamData, keyData] = await Promise.all([get('/api/v1/team'), get('/api/v1/api-keys')]);
    members.replaceChildren(...teamData.members.map((m) => {
      const select = roleSelect('role', m.role, `Role of ${m.full_name}`);
      select.disabled = m.user_id === user.id;
      select.addEventListener('change', async () => {
        try { await api('PATCH', `/api/v1/team/${m.user_id}`, { role: select.value }); toast(`${m.full_name} is now ${select.value}.`); } catch (error) { toast(explain(error), 'error'); load(); }
      });
      return el('tr', { 'data-member': m.email }, el('td', {}, el('strong', {}, m.full_name), el('div', { class: 'small muted' }, m.email)), el('td', {}, select),
        el('td', {}, memberActions(m)));
    }), ...teamData.invitations.map(invitationRow));
    keys.replaceChildren(...keyData.api_keys.map((k) => el('tr', { 'data-key': k.name },
      el('td', {}, el('strong', {}, k.name), el('div', { class: 'small muted' }, `${k.prefix}… · ${k.role}`)),
      el('td', { class: 'small' }, k.revoked_at ? 'revoked' : k.last_used_at ? `used ${k.last_used_at.slice(0, 10)}` : 'never used'),
      el('td', {}, k.revoked_at ? '' : el('button', { class: 'btn small danger', type: 'button', onclick: async () => {
        if (!await confirmAction(`Revoke the key “${k.name}”? Programs using it stop working.`, 'Revoke')) return;
        try { await api('DELETE', `/api/v1/api-keys/${k.id}`); toast('Revoked.'); load(); } catch (error) { toast(explain(error), 'error'); }
      } }, 'Revoke')))));
  }

  async function loadAudit(action = '', actor = '') {
    const query = new URLSearchParams({ limit: '100' });
    if (action) query.set('action', action);
    if (actor) query.set('actor', actor);
    const { entries } = await get(`/api/v1/audit-log?${query}`);
    audit.replaceChildren(...entries.map((e) => el('tr', {}, el('td', { class: 'small' }, e.created_at.replace('T', ' ').slice(0, 19)), el('td', {}, e.actor), el('td', {}, el('code', {}, e.action)), el('td', { class: 'small' }, e.ip || ''))));
  }

  const invite = el('form', { class: 'row', style: 'align-items:flex-end' }, el('div', { class: 'status', style: 'flex-basis:100%' }),
    el('div', { style: 'flex:2;min-width:200px' }, field('Email', el('input', { type: 'email', name: 'email', required: true }))),
    el('div', { style: 'flex:1;min-width:160px' }, field('Role', roleSelect('role', 'coach'))),
    el('div', { class: 'field' }, el('button', { class: 'btn primary', type: 'submit' }, 'Invite')),
    mails ? null : el('p', { class: 'small muted', style: 'flex-basis:100%;margin:0' },
      'This server sends no e-mail: invitations are not mailed. Pass the link on yourself.'));
  invite.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(invite, async () => {
      const status = invite.querySelector('.status');
      try {
        const created = await api('POST', '/api/v1/team/invitations', { email: invite.email.value.trim(), role: invite.role.value });
        const link = created.link || `${location.origin}/app#/signup?invitation=${encodeURIComponent(created.token)}`;
        const words = created.emailed
          ? `Invitation emailed to ${created.email} (${created.role}). You can also send them this link; it is shown once: `
          : `Invitation for ${created.email} (${created.role}). It is not emailed (this server sends no e-mail): pass this link on to them yourself; it is shown once: `;
        status.replaceChildren(el('div', { class: 'alert ok' }, words, el('code', { 'data-test': 'invitation-link' }, link), ' ', copyButton(() => link)));
        invite.email.value = '';
        load();
      } catch (error) { status.replaceChildren(alertBox(explain(error))); }
    });
  });

  const newKey = el('form', { class: 'row', style: 'align-items:flex-end' }, el('div', { class: 'status', style: 'flex-basis:100%' }),
    el('div', { style: 'flex:2;min-width:200px' }, field('Key name', el('input', { type: 'text', name: 'name', required: true, placeholder: 'Website integration' }))),
    el('div', { style: 'flex:1;min-width:160px' }, field('Role', roleSelect('role', 'analyst'))),
    el('div', { class: 'field' }, el('button', { class: 'btn primary', type: 'submit' }, 'Create key')));
  newKey.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(newKey, async () => {
      const status = newKey.querySelector('.status');
      try {
        const created = await api('POST', '/api/v1/api-keys', { name: newKey.name.value.trim(), role: newKey.role.value });
        status.replaceChildren(el('div', { class: 'alert ok' }, 'Copy the key now; it is not shown again: ', el('code', { 'data-test': 'new-key' }, created.key), ' ', copyButton(() => created.key)));
        newKey.name.value = '';
        load();
      } catch (error) { status.replaceChildren(alertBox(explain(error))); }
    });
  });

  const actionFilter = el('input', { type: 'search', name: 'action', placeholder: 'action, e.g. auth.', 'aria-label': 'Filter by action' });
  const actorFilter = el('input', { type: 'search', name: 'actor', placeholder: 'who', 'aria-label': 'Filter by who' });
  const auditForm = el('form', { class: 'row', style: 'margin-bottom:8px' }, el('div', { style: 'flex:1' }, actionFilter), el('div', { style: 'flex:1' }, actorFilter), el('button', { class: 'btn', type: 'submit' }, 'Filter'));
  auditForm.addEventListener('submit', (event) => { event.preventDefault(); loadAudit(actionFilter.value.trim(), actorFilter.value.trim()); });

  const table = (head, body) => el('table', { class: 'table' }, el('thead', {}, el('tr', {}, head.map((h) => el('th', { scope: 'col' }, h)))), body);
  main.append(el('h1', {}, 'Team and keys'),
    el('section', { class: 'card' }, el('h2', {}, 'Team'), invite, resetStatus, table(['Person', 'Role', ''], members),
      requirementSwitch('/api/v1/tenant/mfa-requirement', tenant.require_mfa, 'everyone in this team')),
    el('section', { class: 'card', style: 'margin-top:16px' }, el('h2', {}, 'API keys'), newKey, table(['Key', 'Last use', ''], keys)),
    el('section', { class: 'card', style: 'margin-top:16px' }, el('h2', {}, 'Audit log'), auditForm, table(['When', 'Who', 'What', 'From'], audit)));
  await Promise.all([load(), loadAudit()]);
}
