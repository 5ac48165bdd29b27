// Nudge rules: when the coach writes first (a quiet week, a missed check-in, a streak at risk,
// a goal reached, or a schedule), to whom, and what it is to say. Schedules are picked as
// "every N days / weeks on these days / months on day D, at HH:MM" and stored as RFC 5545 rules.
import { api, get, explain } from './api.js';
import { el, field, toast, alertBox, busy, confirmAction } from './ui.js';

const TRIGGERS = {
  inactivity: 'No message from them for some days',
  missed_check_in: 'A scheduled check-in passed without a value',
  streak_at_risk: 'A daily streak at risk (not checked in yet today)',
  goal_reached: 'A goal reached',
  schedule: 'On a schedule',
};
const WEEKDAYS = [['MO', 'Mon'], ['TU', 'Tue'], ['WE', 'Wed'], ['TH', 'Thu'], ['FR', 'Fri'], ['SA', 'Sat'], ['SU', 'Sun']];

/** The picker's choice as an RRULE, and back. */
export function toRrule({ freq, interval, days, monthDay }) {
  const parts = [`FREQ=${freq}`];
  if (interval > 1) parts.push(`INTERVAL=${interval}`);
  if (freq === 'WEEKLY' && days.length) parts.push(`BYDAY=${days.join(',')}`);
  if (freq === 'MONTHLY') parts.push(`BYMONTHDAY=${monthDay}`);
  return parts.join(';');
}

function fromRrule(rrule) {
  const fields = Object.fromEntries((rrule || 'FREQ=WEEKLY').split(';').map((p) => p.split('=')));
  return {
    freq: fields.FREQ || 'WEEKLY',
    interval: Number(fields.INTERVAL || 1),
    days: fields.BYDAY ? fields.BYDAY.split(',') : [],
    monthDay: Number(fields.BYMONTHDAY || 1),
  };
}

function describe(rule) {
  const t = rule.trigger;
  switch (t.type) {
    case 'inactivity': return `After ${t.days} quiet day${t.days === 1 ? '' : 's'}`;
    case 'schedule': return `${t.rrule} at ${t.at}`;
    default: return TRIGGERS[t.type] || t.type;
  }
}

export async function rules(main, { user }) {
  const canEdit = user.role !== 'analyst';
  const list = el('div', { class: 'stack' });
  const editor = el('div');
  main.append(el('h1', {}, 'Nudge rules'),
    el('p', { class: 'muted' }, 'Rules let the coach write first. Quiet hours, the daily and weekly caps, consent and STOP always apply.'),
    canEdit ? el('p', {}, el('button', { class: 'btn primary', type: 'button', onclick: () => edit(null) }, 'New rule')) : null,
    editor, list);

  const [{ programs }] = await Promise.all([get('/api/v1/programs')]);

  async function load() {
    const { nudge_rules: all } = await get('/api/v1/nudge-rules');
    list.replaceChildren(...all.map((rule) => el('section', { class: 'card', 'data-rule': rule.name },
      el('div', { class: 'row', style: 'justify-content:space-between' }, el('h2', { style: 'margin:0' }, rule.name),
        el('span', { class: `badge ${rule.enabled ? 'ready' : ''}` }, rule.enabled ? 'On' : 'Off')),
      el('p', { class: 'small' }, describe(rule),
        rule.audience.tag ? ` · tag ${rule.audience.tag}` : '',
        rule.audience.program_id ? ` · ${(programs.find((p) => p.id === rule.audience.program_id) || {}).name || 'a program'}` : ''),
      el('p', { class: 'small muted' }, rule.instruction),
      canEdit ? el('div', { class: 'row' },
        el('button', { class: 'btn small', type: 'button', onclick: () => edit(rule) }, 'Edit'),
        el('button', { class: 'btn small danger', type: 'button', onclick: async () => {
          if (!await confirmAction(`Delete the rule “${rule.name}”? Nudges it planned are not sent.`)) return;
          try { await api('DELETE', `/api/v1/nudge-rules/${rule.id}`); toast('Rule deleted.'); load(); } catch (error) { toast(explain(error), 'error'); }
        } }, 'Delete')) : null)));
    if (!all.length) list.append(el('section', { class: 'card' }, el('p', { class: 'muted', style: 'margin:0' }, 'No rule yet.')));
  }

  function edit(rule) {
    const t = rule ? rule.trigger : { type: 'inactivity', days: 3 };
    const name = el('input', { type: 'text', name: 'name', value: rule ? rule.name : '', required: true, maxlength: '100' });
    const type = el('select', { name: 'trigger' }, ...Object.entries(TRIGGERS).map(([v, l]) => el('option', { value: v, selected: v === t.type }, l)));
    const days = el('input', { type: 'number', name: 'days', min: '1', max: '365', value: String(t.days || 3) });
    const pick = fromRrule(t.rrule);
    const freq = el('select', { name: 'freq' }, ...[['DAILY', 'days'], ['WEEKLY', 'weeks'], ['MONTHLY', 'months']]
      .map(([v, l]) => el('option', { value: v, selected: v === pick.freq }, l)));
    const interval = el('input', { type: 'number', name: 'interval', min: '1', max: '52', value: String(pick.interval) });
    const dayBoxes = WEEKDAYS.map(([code, label]) => {
      const box = el('input', { type: 'checkbox', value: code, checked: pick.days.includes(code) });
      return el('label', { class: 'row', style: 'gap:4px' }, box, label);
    });
    const monthDay = el('input', { type: 'number', name: 'month_day', min: '1', max: '28', value: String(pick.monthDay) });
    const at = el('input', { type: 'text', name: 'at', value: t.at || '09:00', placeholder: '09:00' });
    const rrule = el('code', { 'data-rrule': '' });
    const zone = el('input', { type: 'text', name: 'zone', value: Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC' });
    const upcoming = el('ol', { class: 'small', 'aria-label': 'Next five times', 'data-occurrences': '' });
    let asked = 0;
    async function showOccurrences() {
      const mine = ++asked;
      const query = new URLSearchParams({ rrule: toRrule(choice()), at: at.value.trim(), time_zone: zone.value.trim() || 'UTC' });
      try {
        const { occurrences } = await get(`/api/v1/nudge-rules/occurrences?${query}`);
        if (mine !== asked) return;
        const format = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'short', timeZone: zone.value.trim() || 'UTC' });
        upcoming.replaceChildren(...occurrences.map((when) => el('li', {}, format.format(new Date(when)))));
      } catch (error) {
        if (mine === asked) upcoming.replaceChildren(el('li', { class: 'error-text' }, explain(error)));
      }
    }
    const weekly = el('div', { class: 'row', role: 'group', 'aria-label': 'On these days' }, ...dayBoxes);
    const monthly = field('On day of the month', monthDay);
    const schedule = el('div', { class: 'stack' },
      el('div', { class: 'row' }, el('span', {}, 'Every'), interval, freq), weekly, monthly, field('At (their local time)', at),
      el('p', { class: 'small muted' }, 'Stored as ', rrule),
      field('Next five times for someone in', zone, 'An IANA time zone, like Europe/Madrid.'), upcoming);
    const tag = el('input', { type: 'text', name: 'tag', value: rule ? rule.audience.tag || '' : '' });
    const program = el('select', { name: 'program' }, el('option', { value: '' }, 'Everyone'),
      ...programs.map((p) => el('option', { value: p.id, selected: rule && p.id === rule.audience.program_id }, `Enrolled in ${p.name}`)));
    const instruction = el('textarea', { name: 'instruction', rows: '3', required: true }, rule ? rule.instruction : '');
    const enabled = el('input', { type: 'checkbox', name: 'enabled', checked: rule ? rule.enabled : true });
    const daysField = field('Days without a message', days);
    const choice = () => ({ freq: freq.value, interval: Number(interval.value) || 1, days: dayBoxes.map((l) => l.firstChild).filter((b) => b.checked).map((b) => b.value), monthDay: Number(monthDay.value) || 1 });
    function sync() {
      daysField.hidden = type.value !== 'inactivity';
      schedule.hidden = type.value !== 'schedule';
      weekly.hidden = freq.value !== 'WEEKLY';
      monthly.hidden = freq.value !== 'MONTHLY';
      rrule.textContent = toRrule(choice());
      if (!schedule.hidden) showOccurrences();
    }
    [type, freq, interval, monthDay, at, zone, ...dayBoxes.map((l) => l.firstChild)].forEach((n) => n.addEventListener('input', sync));
    const form = el('form', { class: 'card stack', 'aria-label': rule ? 'Edit rule' : 'New rule' }, el('div', { class: 'status' }),
      field('Name', name), field('When', type), daysField, schedule,
      field('Tag (optional)', tag, 'Only people with this tag.'), field('Who', program),
      field('What the coach is to write', instruction, 'An instruction, e.g. “Check in warmly and ask what got in the way”.'),
      el('label', { class: 'row' }, enabled, 'On'),
      el('div', { class: 'row' }, el('button', { class: 'btn primary', type: 'submit' }, 'Save rule'),
        el('button', { class: 'btn', type: 'button', onclick: () => editor.replaceChildren() }, 'Cancel')));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      busy(form, async () => {
        const trigger = { type: type.value };
        if (type.value === 'inactivity') trigger.days = Number(days.value);
        if (type.value === 'schedule') Object.assign(trigger, { rrule: toRrule(choice()), at: at.value.trim() });
        const body = { name: name.value.trim(), enabled: enabled.checked, trigger, instruction: instruction.value.trim(),
          audience: { tag: tag.value.trim() || null, program_id: program.value || null } };
        try {
          if (rule) await api('PUT', `/api/v1/nudge-rules/${rule.id}`, body);
          else await api('POST', '/api/v1/nudge-rules', body);
          toast('Rule saved.');
          editor.replaceChildren();
          load();
        } catch (error) {
          form.querySelector('.status').replaceChildren(alertBox(explain(error)));
        }
      });
    });
    editor.replaceChildren(form);
    sync();
    name.focus();
  }

  await load();
}
