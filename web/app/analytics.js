// Analytics: the numbers from GET /api/v1/analytics (the same endpoint integrators use), drawn as
// SVG charts with text alternatives, for a date range, with CSV export.
import { get, accessToken, explain } from './api.js';
import { el, alertBox } from './ui.js';

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

/** A bar chart: `series` is [{label, values, color}] stacked per bar; `labels` under the bars. */
function barChart(title, labels, series, description) {
  const width = 640; const height = 200; const pad = 28;
  const totals = labels.map((_, i) => series.reduce((sum, s) => sum + s.values[i], 0));
  const max = Math.max(1, ...totals);
  const step = (width - pad) / labels.length;
  const bars = [];
  labels.forEach((label, i) => {
    let y = height - pad;
    for (const s of series) {
      const h = (s.values[i] / max) * (height - pad - 8);
      y -= h;
      bars.push(svg('rect', { x: pad + i * step + step * 0.15, y, width: step * 0.7, height: Math.max(h, 0), fill: s.color },
        svg('title', {}, `${label}: ${s.values[i]} ${s.label}`)));
    }
  });
  const ticks = labels.map((label, i) => (labels.length <= 12 || i % Math.ceil(labels.length / 8) === 0
    ? svg('text', { x: pad + i * step + step / 2, y: height - 8, 'text-anchor': 'middle', 'font-size': '11', fill: '#4b5563' }, label) : null)).filter(Boolean);
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': `${title}. ${description}`, style: 'width:100%;height:auto' },
    svg('text', { x: 0, y: 12, 'font-size': '11', fill: '#4b5563' }, String(max)),
    svg('line', { x1: pad, x2: width, y1: height - pad, y2: height - pad, stroke: '#d1d5db' }), ...bars, ...ticks);
  const legend = el('div', { class: 'row small' }, series.map((s) => el('span', {}, el('span', { style: `display:inline-block;width:10px;height:10px;background:${s.color};margin-right:4px` }), s.label)));
  return el('section', { class: 'card' }, el('h2', {}, title), chart, legend);
}

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

export async function analytics(main, { params, navigate }) {
  const today = new Date();
  const to = params.get('to') || isoDay(today);
  const from = params.get('from') || isoDay(new Date(today.getTime() - 29 * 86400000));
  const fromInput = el('input', { type: 'date', name: 'from', value: from, 'aria-label': 'From' });
  const toInput = el('input', { type: 'date', name: 'to', value: to, 'aria-label': 'To' });
  const range = el('form', { class: 'row', style: 'margin-bottom:16px' }, el('label', { style: 'margin:0' }, 'From ', fromInput), el('label', { style: 'margin:0' }, 'to ', toInput),
    el('button', { class: 'btn', type: 'submit' }, 'Show'),
    el('button', { class: 'btn', type: 'button', onclick: exportCsv }, 'Export CSV'));
  range.addEventListener('submit', (event) => { event.preventDefault(); navigate(`analytics?from=${fromInput.value}&to=${toInput.value}`); });
  main.append(el('h1', {}, 'Analytics'), range);

  async function exportCsv() {
    const response = await fetch(`/api/v1/analytics?from=${fromInput.value}&to=${toInput.value}&format=csv`, { headers: { Authorization: `Bearer ${accessToken()}` } });
    if (!response.ok) return;
    const link = el('a', { href: URL.createObjectURL(await response.blob()), download: `analytics-${fromInput.value}-${toInput.value}.csv` });
    document.body.append(link);
    link.click();
    link.remove();
  }

  let report;
  try {
    report = await get(`/api/v1/analytics?from=${from}&to=${to}`);
  } catch (error) {
    main.append(alertBox(explain(error)));
    return;
  }
  const t = report.totals;
  const percent = (value) => (value == null ? '–' : `${Math.round(value * 100)}%`);
  const stat = (label, value, test) => el('section', { class: 'card' }, el('div', { class: 'small muted' }, label), el('div', { style: 'font-size:1.6rem;font-weight:700', 'data-stat': test }, String(value)));
  const days = report.days.map((d) => d.date.slice(5));
  main.append(
    el('div', { class: 'grid', style: 'grid-template-columns:repeat(auto-fit,minmax(150px,1fr))' },
      stat('Conversations', t.conversations, 'conversations'), stat('Active end users', t.active_visitors, 'active_visitors'),
      stat('Questions', t.questions, 'questions'), stat('Answered', percent(t.answered_rate), 'answered_rate'),
      stat('Average confidence', percent(t.avg_confidence), 'avg_confidence'), stat('Asked for a person', t.handoffs, 'handoffs')),
    el('div', { class: 'stack', style: 'margin-top:16px' },
      barChart('Conversations and active end users per day', days, [
        { label: 'conversations', values: report.days.map((d) => d.conversations), color: '#0f766e' },
        { label: 'active end users', values: report.days.map((d) => d.active_visitors), color: '#93c5fd' },
      ], `${t.conversations} conversations and ${t.active_visitors} active end users from ${report.from} to ${report.to}.`),
      barChart('Answered versus fallback', days, [
        { label: 'answered', values: report.days.map((d) => d.answered), color: '#15803d' },
        { label: 'fallback', values: report.days.map((d) => d.fallbacks), color: '#f59e0b' },
      ], `${t.answered} answered and ${t.fallbacks} fallback answers.`),
      barChart('Busiest hours (UTC)', report.busiest_hours.map((_, h) => String(h)), [
        { label: 'questions', values: report.busiest_hours, color: '#6366f1' },
      ], `The busiest hour is ${report.busiest_hours.indexOf(Math.max(...report.busiest_hours))}:00 UTC.`),
      el('section', { class: 'card' }, el('h2', {}, 'Top questions'),
        report.top_questions.length
          ? el('table', { class: 'table' }, el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Question'), el('th', { scope: 'col' }, 'Times'))),
            el('tbody', {}, report.top_questions.map((q) => el('tr', {}, el('td', {}, q.question), el('td', {}, String(q.count))))))
          : el('p', { class: 'muted' }, 'No questions in this period.')),
      apiUsage(report.api_usage || [])));
}

/** Calls to the OpenAI-compatible API (/v1) in the range, per key or member and endpoint. */
function apiUsage(rows) {
  const header = ['Key or member', 'Endpoint', 'Requests', 'Prompt tokens', 'Completion tokens'];
  return el('section', { class: 'card', 'data-section': 'api-usage' }, el('h2', {}, 'API usage'),
    rows.length
      ? el('table', { class: 'table' }, el('thead', {}, el('tr', {}, header.map((h) => el('th', { scope: 'col' }, h)))),
        el('tbody', {}, rows.map((r) => el('tr', {}, el('td', {}, r.credential), el('td', {}, r.endpoint), el('td', {}, String(r.requests)),
          el('td', {}, String(r.prompt_tokens)), el('td', {}, String(r.completion_tokens))))))
      : el('p', { class: 'muted' }, 'No calls to the OpenAI-compatible API (/v1) in this period.'));
}
