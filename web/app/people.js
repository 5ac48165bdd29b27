// People: everyone the coach works with (end users), filtered by tag, program and activity;
// a person's page shows their goals with progress, programs, recent nudges and where they talk.
import { api, get, explain } from './api.js';
import { el, field, toast, alertBox, busy } from './ui.js';
import { goalChart } from './charts.js';
import { personDataActions } from './privacy.js';

const when = (at) => (at ? at.replace('T', ' ').slice(0, 16) + ' UTC' : 'never');
const percent = (x) => `${Math.round((x || 0) * 100)}%`;
const channelNames = { web: 'Website', telegram: 'Telegram', whatsapp: 'WhatsApp' };

export async function people(main, { params, user }) {
  const id = params.get('id');
  if (id) return person(main, id, user.role !== 'analyst', user.role === 'admin');
  const programs = (await get('/api/v1/programs')).programs;
  const filters = { q: params.get('q') || '', tag: params.get('tag') || '', program_id: params.get('program') || '', activity: params.get('activity') || '' };
  const search = el('input', { type: 'search', name: 'q', value: filters.q, placeholder: 'name or email' });
  const tag = el('input', { type: 'text', name: 'tag', value: filters.tag, placeholder: 'any tag' });
  const program = el('select', { name: 'program' }, el('option', { value: '' }, 'Any program'),
    ...programs.map((p) => el('option', { value: p.id, selected: p.id === filters.program_id }, p.name)));
  const activity = el('select', { name: 'activity' }, ...[['', 'Anyone'], ['active', 'Wrote this week'], ['inactive', 'Quiet for a week']]
    .map(([value, label]) => el('option', { value, selected: value === filters.activity }, label)));
  const form = el('form', { class: 'row', 'aria-label': 'Filter people' },
    el('label', {}, 'Search ', search), el('label', {}, 'Tag ', tag), el('label', {}, 'Program ', program), el('label', {}, 'Activity ', activity),
    el('button', { class: 'btn', type: 'submit' }, 'Filter'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    if (search.value.trim()) query.set('q', search.value.trim());
    if (tag.value.trim()) query.set('tag', tag.value.trim());
    if (program.value) query.set('program', program.value);
    if (activity.value) query.set('activity', activity.value);
    location.hash = `#/people?${query}`;
  });
  const query = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
  const { end_users: users, total } = await get(`/api/v1/end-users?${query}`);
  const rows = users.map((u) => el('tr', { 'data-person': u.id },
    el('td', {}, el('a', { href: `#/people?id=${encodeURIComponent(u.id)}` }, u.name || `End user ${u.id.slice(0, 6)}`),
      u.test_clock_id ? el('span', { class: 'badge', style: 'margin-left:6px' }, 'test') : ''),
    el('td', {}, u.tags.join(', ')),
    el('td', {}, when(u.last_active_at)),
    el('td', {}, u.opted_out_at ? 'Opted out' : u.consent ? 'Yes' : 'Not asked')));
  main.append(el('h1', {}, 'People'),
    el('p', { class: 'muted' }, 'Everyone your coach works with: people who wrote to it on any channel, and test end users.'),
    form,
    el('p', { class: 'small muted' }, `${total} ${total === 1 ? 'person' : 'people'}`),
    users.length
      ? el('table', {}, el('thead', {}, el('tr', {}, ...['Name', 'Tags', 'Last active', 'Check-ins'].map((h) => el('th', {}, h)))), el('tbody', {}, ...rows))
      : el('section', { class: 'card' }, el('p', { class: 'muted', style: 'margin:0' }, 'Nobody yet. People appear here once they write to your coach.')));
}

/** A small form that calls the API and reloads the page; errors show in it. */
function action(label, fields, submit) {
  const form = el('form', { class: 'row', 'aria-label': label }, el('div', { class: 'status' }), ...fields,
    el('button', { class: 'btn small', type: 'submit' }, label));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(form, async () => {
      try { await submit(); toast(`${label}: done.`); window.dispatchEvent(new HashChangeEvent('hashchange')); } catch (error) {
        form.querySelector('.status').replaceChildren(alertBox(explain(error)));
      }
    });
  });
  return form;
}

async function person(main, id, canEdit, isAdmin) {
  let profile;
  try {
    profile = await get(`/api/v1/end-users/${encodeURIComponent(id)}`);
  } catch (error) {
    toast(explain(error), 'error');
    location.hash = '#/people';
    return;
  }
  const name = profile.name || `End user ${profile.id.slice(0, 6)}`;
  const goals = profile.goals.map((g) => {
    const value = el('input', { type: 'number', step: 'any', 'aria-label': `Value for ${g.title}`, required: true });
    return el('div', { class: 'card', 'data-goal': g.id },
      el('div', { class: 'row', style: 'justify-content:space-between' }, el('strong', {}, g.title),
        el('span', { class: `badge ${g.status === 'reached' ? 'ready' : ''}` }, g.status)),
      el('progress', { max: '100', value: String(Math.round(g.progress * 100)), 'aria-label': `${g.title}: ${percent(g.progress)}` }),
      el('p', { class: 'small' }, `${g.latest_value ?? '–'} of ${g.target} ${g.unit} · ${percent(g.progress)} · streak ${g.current_streak} (best ${g.longest_streak})`),
      goalChart({ title: g.title, unit: g.unit || '', target: g.target, baseline: g.baseline, points: g.check_ins.map((c) => ({ at: c.local_date, value: c.value })) }),
      g.check_ins.length ? el('p', { class: 'small muted' }, 'Check-ins: ', g.check_ins.slice(-8).map((c) => `${c.value} (${c.local_date})`).join(' · ')) : null,
      canEdit ? action('Record a check-in', [value], () => api('POST', `/api/v1/goals/${g.id}/check-ins`, { value: Number(value.value) })) : null);
  });
  const programs = await get('/api/v1/programs');
  const programName = (pid) => (programs.programs.find((p) => p.id === pid) || {}).name || pid.slice(0, 8);
  const change = (e, status) => el('button', { class: 'btn small', type: 'button', onclick: async () => {
    try { await api('PATCH', `/api/v1/enrollments/${e.id}`, { status }); toast('Enrolment changed.'); window.dispatchEvent(new HashChangeEvent('hashchange')); } catch (error) { toast(explain(error), 'error'); }
  } }, { paused: 'Pause', active: 'Resume', unenrolled: 'Unenrol' }[status]);
  const enrollments = profile.enrollments.map((e) => el('li', { 'data-enrollment': e.id },
    `${programName(e.program_id)} · ${e.status} · step ${e.steps_done.length} · since ${when(e.enrolled_at)} `,
    canEdit && e.status === 'active' ? change(e, 'paused') : null,
    canEdit && e.status === 'paused' ? change(e, 'active') : null,
    canEdit && (e.status === 'active' || e.status === 'paused') ? change(e, 'unenrolled') : null));
  const published = programs.programs.filter((p) => p.published_version);
  const enrolIn = el('select', { 'aria-label': 'Program to enrol in' }, ...published.map((p) => el('option', { value: p.id }, p.name)));
  const goalTitle = el('input', { type: 'text', 'aria-label': 'Goal title', placeholder: 'Walk every day', required: true });
  const goalMetric = el('input', { type: 'text', 'aria-label': 'Metric', placeholder: 'steps', required: true });
  const goalTarget = el('input', { type: 'number', step: 'any', 'aria-label': 'Target', placeholder: '8000', required: true });
  const nudges = profile.recent_nudges.map((n) => el('tr', {},
    el('td', {}, when(n.sent_at || n.scheduled_for)), el('td', {}, n.kind), el('td', {}, n.status + (n.reason ? ` (${n.reason})` : '')),
    el('td', {}, channelNames[n.channel] || n.channel || ''), el('td', { class: 'small' }, (n.content || '').slice(0, 120))));
  const conversations = profile.conversations.map((c) => el('li', { 'data-conversation': c.id },
    el('a', { href: `#/inbox?c=${encodeURIComponent(c.id)}` }, channelNames[c.channel] || c.channel),
    ` · last message ${when(c.last_message_at)}${c.taken_over ? ' · taken over' : ''}`));
  main.append(
    el('p', {}, el('a', { href: '#/people' }, '← People')),
    el('h1', {}, name),
    el('p', { class: 'muted' }, [profile.email, `zone ${profile.time_zone}`, profile.tags.length ? `tags ${profile.tags.join(', ')}` : null,
      profile.opted_out_at ? `opted out ${when(profile.opted_out_at)}` : profile.consent ? `check-ins agreed (${profile.consent_channel || 'api'})` : 'check-ins not agreed',
      profile.test_clock_id ? 'test end user' : null].filter(Boolean).join(' · ')),
    el('h2', {}, 'Goals'), goals.length ? el('div', { class: 'stack' }, ...goals) : el('p', { class: 'muted' }, 'No goals yet.'),
    canEdit ? action('Add a goal', [goalTitle, goalMetric, goalTarget], () => api('POST', `/api/v1/end-users/${profile.id}/goals`,
      { title: goalTitle.value.trim(), metric: goalMetric.value.trim(), target: Number(goalTarget.value), direction: 'increase' })) : null,
    el('h2', {}, 'Programs'), enrollments.length ? el('ul', {}, ...enrollments) : el('p', { class: 'muted' }, 'Not enrolled in a program.'),
    canEdit && published.length ? action('Enrol', [enrolIn], () => api('POST', `/api/v1/programs/${enrolIn.value}/enrollments`, { end_user_id: profile.id })) : null,
    el('h2', {}, 'Conversations'), conversations.length ? el('ul', {}, ...conversations) : el('p', { class: 'muted' }, 'No conversation yet.'),
    el('h2', {}, 'Recent messages from the coach'),
    nudges.length ? el('table', {}, el('thead', {}, el('tr', {}, ...['When', 'Kind', 'Status', 'Channel', 'Text'].map((h) => el('th', {}, h)))), el('tbody', {}, ...nudges))
      : el('p', { class: 'muted' }, 'None yet.'),
    isAdmin ? personDataActions(profile, name) : null);
}
