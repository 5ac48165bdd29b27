// Data and privacy: how long the tenant keeps conversations, end users, exports and its audit
// log (with the next and last clean-up), an export of everything, and the export and erasure
// of one person (used on their page).
import { api, get, explain, accessToken } from './api.js';
import { el, field, toast, alertBox, busy, confirmAction } from './ui.js';

const when = (at) => (at ? new Date(at).toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' }) : '');
const KINDS = { conversations: 'conversations', messages: 'messages', end_users: 'people', exports: 'exports', audit_entries: 'audit entries' };

/** "3 conversations, 12 messages" from a run's counts; the rows that went with erased people
 * are summed up as "other records". */
function summary(removed) {
  const named = Object.entries(KINDS).filter(([k]) => removed[k]).map(([k, label]) => `${removed[k]} ${label}`);
  const other = Object.entries(removed).filter(([k]) => !(k in KINDS)).reduce((sum, [, n]) => sum + n, 0);
  if (other) named.push(`${other} other records of those people`);
  return named.length ? named.join(', ') : 'nothing was old enough';
}

/** Waits for an export to be written, then saves its ZIP; `path` is its URL. */
export async function downloadExport(path, fileName, onState) {
  for (;;) {
    const response = await fetch(path, { headers: { Authorization: `Bearer ${accessToken()}` } });
    if (response.status === 200) {
      const url = URL.createObjectURL(await response.blob());
      const link = el('a', { href: url, download: fileName, 'data-test': 'export-link' }, `Download ${fileName}`);
      onState(link);
      return link;
    }
    const body = await response.json().catch(() => ({}));
    if (response.status !== 202) throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
    onState(`Preparing the export (${body.status})…`);
    await new Promise((resolve) => { setTimeout(resolve, 500); });
  }
}

/** Export and erase buttons for one person's page (admins). */
export function personDataActions(profile, name) {
  const status = el('div', { role: 'status', class: 'small' });
  const exportButton = el('button', { class: 'btn small', type: 'button', onclick: async () => {
    exportButton.disabled = true;
    try {
      const started = await api('POST', `/api/v1/end-users/${profile.id}/export`);
      await downloadExport(`/api/v1/end-users/${profile.id}/export/${started.id}`, `export-${profile.id.slice(0, 8)}.zip`,
        (state) => status.replaceChildren(state));
    } catch (error) { status.replaceChildren(alertBox(explain(error))); } finally { exportButton.disabled = false; }
  } }, 'Export their data');
  const eraseButton = el('button', { class: 'btn small danger', type: 'button', onclick: async () => {
    if (!await confirmAction(`Erase ${name} and everything of theirs (conversations, goals, check-ins, programs)? This cannot be undone.`, 'Erase')) return;
    try {
      await api('DELETE', `/api/v1/end-users/${profile.id}`);
      toast(`${name} was erased.`);
      location.hash = '#/people';
    } catch (error) { status.replaceChildren(alertBox(explain(error))); }
  } }, 'Erase this person');
  return el('section', { class: 'card', 'aria-labelledby': 'their-data' },
    el('h2', { id: 'their-data' }, 'Their data'),
    el('p', { class: 'small muted' }, 'A ZIP of everything stored about them (what the law calls a data export), or erase it all for good. The audit log keeps that it happened, never what was erased.'),
    el('div', { class: 'row' }, exportButton, eraseButton), status);
}

export async function privacy(main, { user }) {
  const view = await get('/api/v1/retention');
  const admin = user.role === 'admin';
  const number = (name, value, attrs) => el('input', { type: 'number', name, min: '1', step: '1', value: value ?? '', placeholder: 'keep', disabled: !admin, ...attrs });
  const fields = {
    conversation_days: field('Delete conversations quiet for (days)', number('conversation_days', view.conversation_days), 'Counted from the last message.'),
    end_user_days: field('Erase people inactive for (days)', number('end_user_days', view.end_user_days), 'No message, check-in or sign-in for this long: erased with everything of theirs.'),
    export_hours: field('Delete exports after (hours)', number('export_hours', view.export_hours), 'Empty: 7 days (a person’s own download link: 24 hours).'),
    audit_days: field('Keep the audit log for (days)', number('audit_days', view.audit_days, { min: String(view.audit_minimum_days) }),
      `At least ${view.audit_minimum_days} days on this server.`),
  };
  const state = el('div', { 'data-test': 'retention-state', role: 'status' });
  const showState = (v) => state.replaceChildren(
    el('p', {}, 'Next clean-up: ', el('strong', {}, v.next_run_at ? when(v.next_run_at) : 'none (nothing is set to be deleted)')),
    el('p', {}, 'Last clean-up: ', v.last_run ? el('span', { 'data-test': 'last-run' }, `${when(v.last_run.at)}: ${summary(v.last_run.removed)}`) : 'not yet'));
  showState(view);
  const form = el('form', { novalidate: true, 'aria-label': 'Retention policy' }, el('div', { class: 'status' }),
    el('div', { class: 'retention-grid' }, Object.values(fields)),
    admin ? el('div', { class: 'row' }, el('button', { class: 'btn primary', type: 'submit' }, 'Save'),
      el('button', { class: 'btn', type: 'button', onclick: () => applyNow() }, 'Clean up now')) : el('p', { class: 'small muted' }, 'Only admins change these.'));
  const formStatus = form.querySelector('.status');
  async function applyNow() {
    try {
      const run = await api('POST', '/api/v1/retention/run');
      toast(`Cleaned up: ${summary(run.removed)}.`);
      showState(await get('/api/v1/retention'));
    } catch (error) { formStatus.replaceChildren(alertBox(explain(error))); }
  }
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    formStatus.replaceChildren();
    Object.values(fields).forEach((f) => f.setError(''));
    const policy = {};
    let valid = true;
    for (const [name, wrapper] of Object.entries(fields)) {
      const raw = form[name].value.trim();
      const value = raw === '' ? null : Number(raw);
      const minimum = name === 'audit_days' ? view.audit_minimum_days : 1;
      if (value !== null && (!Number.isInteger(value) || value < minimum)) {
        wrapper.setError(minimum > 1 ? `Keep it at least ${minimum} days, or leave it empty to keep it all.` : 'Enter a whole number, or leave it empty to keep it all.');
        valid = false;
      }
      policy[name] = value;
    }
    if (!valid) return;
    busy(form, async () => {
      try {
        showState(await api('PUT', '/api/v1/retention', policy));
        toast('Retention saved.');
        formStatus.replaceChildren(alertBox('Saved. The first clean-up runs now, then once a day.', 'ok'));
      } catch (error) { formStatus.replaceChildren(alertBox(explain(error))); }
    });
  });

  const exportStatus = el('div', { role: 'status', class: 'small' });
  const exportButton = el('button', { class: 'btn', type: 'button', disabled: !admin, onclick: async () => {
    exportButton.disabled = true;
    try {
      const started = await api('POST', '/api/v1/tenant/export');
      await downloadExport(`/api/v1/tenant/export/${started.id}`, `companero-export-${started.id.slice(0, 8)}.zip`, (s) => exportStatus.replaceChildren(s));
    } catch (error) { exportStatus.replaceChildren(alertBox(explain(error))); } finally { exportButton.disabled = !admin; }
  } }, 'Export everything');

  main.append(el('h1', {}, 'Data and privacy'),
    el('p', { class: 'muted' }, 'What your coach keeps, for how long, and a copy of all of it. Each person can also download or delete their own data from the chat menu.'),
    el('section', { class: 'card', 'aria-labelledby': 'retention-title' }, el('h2', { id: 'retention-title' }, 'How long data is kept'),
      el('p', { class: 'small muted' }, 'Leave a box empty to keep that data until you delete it. Clean-ups run once a day; each is in the audit log with what it counted. Backups keep deleted data until they age out.'),
      form, state),
    el('section', { class: 'card', style: 'margin-top:16px', 'aria-labelledby': 'export-title' }, el('h2', { id: 'export-title' }, 'Export everything'),
      el('p', { class: 'small muted' }, 'One ZIP with your settings, team, documents and their originals, programs, rules, people and their conversations, and the audit log.'),
      exportButton, exportStatus));
}
