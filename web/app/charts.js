// Small SVG charts with their text alternative beside them (a table or a sentence), drawn
// without a library: a goal's values over time against its target, a retention heat-map by
// weekly cohort, and a distribution as bars.
const SVG = 'http://www.w3.org/2000/svg';

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  node.append(...children);
  return node;
}

function figure(chart, description) {
  const id = `chart-${Math.random().toString(36).slice(2, 9)}`;
  chart.setAttribute('role', 'img');
  chart.setAttribute('aria-labelledby', id);
  const caption = document.createElement('figcaption');
  caption.id = id;
  caption.className = 'small muted';
  caption.textContent = description;
  const node = document.createElement('figure');
  node.className = 'chart';
  node.append(chart, caption);
  return node;
}

/**
 * A goal's check-ins as a line over time, with the target as a dashed line. `points` are
 * `{ at, value }` (oldest first).
 */
export function goalChart({ title, unit, target, baseline, points }) {
  const width = 320, height = 120, pad = 24;
  const values = points.map((p) => p.value);
  const low = Math.min(baseline, target, ...values);
  const high = Math.max(baseline, target, ...values);
  const span = high - low || 1;
  const withUnit = (v) => (unit ? `${v} ${unit}` : String(v));
  const y = (v) => height - pad - ((v - low) / span) * (height - 2 * pad);
  const x = (i) => pad + (points.length > 1 ? (i / (points.length - 1)) * (width - 2 * pad) : (width - 2 * pad) / 2);
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, width, height, 'data-chart': 'goal', 'data-points': points.length });
  chart.append(svg('line', { x1: pad, x2: width - pad, y1: y(target), y2: y(target), stroke: '#16a34a', 'stroke-dasharray': '4 3' }),
    svg('text', { x: width - pad, y: y(target) - 4, 'text-anchor': 'end', 'font-size': 10, fill: '#166534' }, `target ${target}`));
  if (points.length) {
    chart.append(svg('polyline', { points: points.map((p, i) => `${x(i)},${y(p.value)}`).join(' '), fill: 'none', stroke: '#2563eb', 'stroke-width': 2 }));
    points.forEach((p, i) => chart.append(svg('circle', { cx: x(i), cy: y(p.value), r: 3, fill: '#2563eb' }, svg('title', {}, `${withUnit(p.value)} on ${p.at}`))));
  }
  const latest = points.length ? `latest ${withUnit(values[values.length - 1])}` : 'no check-in yet';
  return figure(chart, `${title}: ${points.length} check-in${points.length === 1 ? '' : 's'} (${values.join(', ') || 'none'}), ${latest}, target ${withUnit(target)}.`);
}

/** Rows of `{ label, cells: [0..1] }` as a heat-map; darker is more. */
export function heatMap(rows, { columnLabel, describe }) {
  const columns = Math.max(1, ...rows.map((r) => r.cells.length));
  const cell = 26, left = 84, top = 18;
  const chart = svg('svg', { viewBox: `0 0 ${left + columns * cell} ${top + rows.length * cell}`, width: left + columns * cell, height: top + rows.length * cell, 'data-chart': 'heat-map' });
  for (let c = 0; c < columns; c += 1) chart.append(svg('text', { x: left + c * cell + cell / 2, y: 12, 'text-anchor': 'middle', 'font-size': 10 }, columnLabel(c)));
  rows.forEach((row, r) => {
    chart.append(svg('text', { x: left - 6, y: top + r * cell + cell / 2 + 4, 'text-anchor': 'end', 'font-size': 10 }, row.label));
    row.cells.forEach((share, c) => {
      chart.append(svg('rect', { x: left + c * cell + 1, y: top + r * cell + 1, width: cell - 2, height: cell - 2, rx: 3,
        fill: `rgba(37, 99, 235, ${0.08 + 0.92 * share})` }, svg('title', {}, `${row.label}, ${columnLabel(c)}: ${Math.round(share * 100)}%`)));
    });
  });
  return figure(chart, describe);
}

/** Labelled counts as vertical bars. */
export function bars(items, { describe }) {
  const width = 320, height = 120, pad = 20;
  const most = Math.max(1, ...items.map((i) => i.count));
  const slot = (width - 2 * pad) / Math.max(1, items.length);
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, width, height, 'data-chart': 'bars' });
  items.forEach((item, i) => {
    const h = ((height - 2 * pad) * item.count) / most;
    chart.append(svg('rect', { x: pad + i * slot + 4, y: height - pad - h, width: slot - 8, height: h, fill: '#2563eb' }, svg('title', {}, `${item.label}: ${item.count}`)),
      svg('text', { x: pad + i * slot + slot / 2, y: height - 6, 'text-anchor': 'middle', 'font-size': 10 }, item.label),
      svg('text', { x: pad + i * slot + slot / 2, y: height - pad - h - 3, 'text-anchor': 'middle', 'font-size': 10 }, String(item.count)));
  });
  return figure(chart, describe);
}
