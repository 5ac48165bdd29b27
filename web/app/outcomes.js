// Outcomes: what each program achieves for real end users: completion, where people drop
// off, weekly retention, goal progress and check-in adherence.
import { get } from './api.js';
import { el } from './ui.js';
import { bars, heatMap } from './charts.js';

const BUCKETS = ['0–20%', '20–40%', '40–60%', '60–80%', '80–100%'];

const percent = (x) => (x == null ? '–' : `${Math.round(x * 100)}%`);

export async function outcomes(main) {
  const { programs } = await get('/api/v1/programs');
  const published = programs.filter((p) => p.published_version);
  main.append(el('h1', {}, 'Outcomes'),
    el('p', { class: 'muted' }, 'Results of each published program for real end users (test end users are left out).'));
  if (!published.length) {
    main.append(el('section', { class: 'card' }, el('p', { class: 'muted', style: 'margin:0' }, 'Publish a program to see its outcomes here.')));
    return;
  }
  const cards = await Promise.all(published.map(async (program) => {
    const o = await get(`/api/v1/analytics/outcomes?program_id=${encodeURIComponent(program.id)}`);
    const figure = (label, value) => el('div', { class: 'figure' }, el('div', { class: 'small muted' }, label), el('strong', {}, value));
    const steps = o.drop_off.map((s) => el('tr', {}, el('td', {}, s.step_key), el('td', {}, String(s.reached)), el('td', {}, percent(s.drop_off))));
    const weeks = o.retention.map((c) => el('tr', {}, el('td', {}, c.week), el('td', {}, String(c.enrolled)), el('td', {}, percent(c.retained))));
    const csv = () => {
      const rows = [['program', 'measure', 'key', 'value'],
        ...[['enrolled', o.enrolled], ['active', o.active], ['completed', o.completed], ['completion_rate', o.completion_rate],
          ['median_goal_progress', o.median_goal_progress], ['check_in_adherence', o.check_in_adherence], ['nudge_reply_rate', o.nudge_reply_rate]]
          .map(([key, value]) => [program.name, 'total', key, value ?? '']),
        ...o.drop_off.map((s) => [program.name, 'step_reached', s.step_key, s.reached]),
        ...o.retention.map((c) => [program.name, 'cohort_retained', c.week, c.retained]),
        ...o.retention.flatMap((c) => (c.weeks || []).map((share, k) => [program.name, `cohort_checked_in_week_${k}`, c.week, share])),
        ...(o.goal_progress_distribution || []).map((count, i) => [program.name, 'goals_at_progress', BUCKETS[i], count])];
      const text = rows.map((r) => r.map((v) => `"${String(v).replace(/"/g, '""')}"`).join(',')).join('\n');
      const link = el('a', { href: URL.createObjectURL(new Blob([text], { type: 'text/csv' })), download: `outcomes-${program.name}.csv` });
      document.body.append(link); link.click(); link.remove();
    };
    return el('section', { class: 'card', 'data-outcomes': program.id },
      el('div', { class: 'row', style: 'justify-content:space-between' }, el('h2', { style: 'margin-top:0' }, program.name),
        el('button', { class: 'btn small', type: 'button', onclick: csv }, 'Download CSV')),
      el('div', { class: 'row' }, figure('Enrolled', String(o.enrolled)), figure('Active', String(o.active)), figure('Completed', `${o.completed} (${percent(o.completion_rate)})`),
        figure('Median goal progress', percent(o.median_goal_progress)), figure('Check-in adherence', percent(o.check_in_adherence)),
        figure('Replies to nudges', percent(o.nudge_reply_rate))),
      el('div', { class: 'charts' },
        steps.length ? bars(o.drop_off.map((st) => ({ label: st.step_key, count: st.reached })),
          { describe: `Completion funnel: ${o.drop_off.map((st) => `${st.step_key} reached by ${st.reached}`).join(', ')}.` }) : null,
        o.retention.length ? heatMap(o.retention.map((c) => ({ label: c.week, cells: c.weeks || [] })),
          { columnLabel: (k) => `W${k}`, describe: `Retention heat-map: for each enrolment week, the share who checked in during week 0, 1, 2… after enrolling. ${o.retention.map((c) => `${c.week}: ${(c.weeks || []).map((w) => percent(w)).join(' / ')}`).join('; ')}.` }) : null,
        o.goal_progress_distribution && o.goal_progress_distribution.some((n) => n > 0)
          ? bars(o.goal_progress_distribution.map((count, i) => ({ label: BUCKETS[i], count })),
            { describe: `Goal progress: ${o.goal_progress_distribution.map((count, i) => `${count} at ${BUCKETS[i]}`).join(', ')}.` }) : null),
      steps.length ? el('details', {}, el('summary', {}, 'Drop-off by step'),
        el('table', {}, el('thead', {}, el('tr', {}, el('th', {}, 'Step'), el('th', {}, 'Reached'), el('th', {}, 'Did not reach'))), el('tbody', {}, ...steps))) : null,
      weeks.length ? el('details', {}, el('summary', {}, 'Retention by enrolment week'),
        el('table', {}, el('thead', {}, el('tr', {}, el('th', {}, 'Week'), el('th', {}, 'Enrolled'), el('th', {}, 'Wrote in the last 7 days'))), el('tbody', {}, ...weeks))) : null);
  }));
  main.append(...cards);
}
