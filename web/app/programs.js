// Programs: the list, and a builder for one program: goals, a timeline of steps (reordered by
// drag or with the Move buttons, which the keyboard reaches), choices that lead to branch steps,
// checks as you type, saving versions, publishing with a confirmation, and trying it out as a
// test end user on a test clock.
import { api, get, explain } from './api.js';
import { el, field, toast, alertBox, busy, confirmAction } from './ui.js';

const KINDS = { message: 'Message', check_in: 'Check-in', milestone: 'Milestone', resource: 'Resource' };
const HHMM = /^([01]\d|2[0-3]):[0-5]\d$/;

export async function programs(main, { params }) {
  const id = params.get('id');
  if (id) return builder(main, id === 'new' ? null : id);
  const { programs: all } = await get('/api/v1/programs');
  // Enrolled and completion of the published ones, from their outcomes.
  const results = Object.fromEntries(await Promise.all(all.filter((p) => p.published_version)
    .map(async (p) => [p.id, await get(`/api/v1/analytics/outcomes?program_id=${encodeURIComponent(p.id)}`).catch(() => null)])));
  main.append(el('h1', {}, 'Programs'),
    el('p', { class: 'muted' }, 'Programs are steps over days: messages, check-ins on goals, milestones, resources, and choices that branch.'),
    el('p', {}, el('a', { class: 'btn primary', href: '#/programs?id=new' }, 'New program')),
    all.length
      ? el('table', {}, el('thead', {}, el('tr', {}, ...['Program', 'Status', 'Version', 'Steps', 'Enrolled', 'Completed'].map((h) => el('th', {}, h)))),
        el('tbody', {}, ...all.map((p) => el('tr', { 'data-program': p.id },
          el('td', {}, el('a', { href: `#/programs?id=${encodeURIComponent(p.id)}` }, p.name)),
          el('td', {}, el('span', { class: `badge ${p.status === 'published' ? 'ready' : ''}` }, p.status)),
          el('td', {}, `v${p.version}${p.published_version && p.published_version !== p.version ? ` (v${p.published_version} published)` : ''}`),
          el('td', {}, String(p.steps.length)),
          el('td', {}, results[p.id] ? String(results[p.id].enrolled) : '–'),
          el('td', {}, results[p.id] ? `${Math.round(results[p.id].completion_rate * 100)}%` : '–')))))
      : el('section', { class: 'card' }, el('p', { class: 'muted', style: 'margin:0' }, 'No program yet.')));
}

function blankStep(index) {
  return { key: `step${index + 1}`, day: index, at: '09:00', kind: 'message', text: '', goal_key: null, choices: [] };
}

async function builder(main, id) {
  const program = id ? await get(`/api/v1/programs/${encodeURIComponent(id)}`) : null;
  const state = {
    id,
    name: program ? program.name : '',
    description: program ? program.description || '' : '',
    goals: program ? program.goals : [],
    steps: program ? program.steps.map((s) => ({ ...s, choices: s.choices || [] })) : [blankStep(0)],
    status: program ? program.status : 'draft',
    version: program ? program.version : 0,
  };
  const status = el('div', { class: 'status' });
  const timeline = el('ol', { class: 'stack timeline', 'aria-label': 'Steps' });
  const goalsList = el('div', { class: 'stack' });
  const name = el('input', { type: 'text', name: 'name', value: state.name, required: true, maxlength: '200' });
  const description = el('textarea', { name: 'description', rows: '2' }, state.description);
  name.addEventListener('input', () => { state.name = name.value; });
  description.addEventListener('input', () => { state.description = description.value; });
  const header = el('div', { class: 'row', style: 'justify-content:space-between' },
    el('h1', {}, id ? state.name || 'Program' : 'New program'),
    el('span', { class: `badge ${state.status === 'published' ? 'ready' : ''}`, 'data-status': '' }, id ? `${state.status} · v${state.version}` : 'not saved'));

  function problems() {
    const found = [];
    const keys = state.steps.map((s) => s.key.trim());
    if (!state.name.trim()) found.push('The program needs a name.');
    state.steps.forEach((s, i) => {
      const where = `Step ${i + 1}`;
      if (!/^[A-Za-z0-9_-]{1,50}$/.test(s.key.trim())) found.push(`${where}: the key is 1 to 50 letters, digits, - or _.`);
      else if (keys.indexOf(s.key.trim()) !== i) found.push(`${where}: the key “${s.key}” is used twice.`);
      if (!HHMM.test(s.at)) found.push(`${where}: the time is HH:MM, like 09:00.`);
      if (s.day === '' || s.day == null || Number(s.day) < 0 || Number(s.day) > 3650) found.push(`${where}: the day is 0 (enrolment day) to 3650.`);
      if ((s.kind === 'message' || s.kind === 'milestone') && !s.text.trim()) found.push(`${where}: write what the step says.`);
      if ((s.kind === 'check_in' || s.kind === 'milestone') && !s.goal_key && state.goals.length !== 1) found.push(`${where}: choose the goal it is about.`);
      s.choices.forEach((c, j) => {
        if (!c.label.trim()) found.push(`${where}, choice ${j + 1}: the label is empty.`);
        if (!keys.includes(c.next)) found.push(`${where}, choice ${j + 1}: choose the step it leads to.`);
      });
    });
    return found;
  }

  function check() {
    const found = problems();
    status.replaceChildren(...(found.length ? [alertBox(found.join(' '), 'warn')] : []));
    return found;
  }

  function move(from, to) {
    if (to < 0 || to >= state.steps.length) return;
    const [step] = state.steps.splice(from, 1);
    state.steps.splice(to, 0, step);
    renderSteps();
    timeline.children[to]?.querySelector('[data-move="up"]')?.focus();
  }

  // Dragging by a card's handle, with the pointer (mouse, pen or touch alike): the card lands
  // where the pointer is let go, the cards it passes show where; the page scrolls near its edges.
  function dragFrom(event, from, handle) {
    if (event.button !== 0) return;
    event.preventDefault();
    handle.setPointerCapture(event.pointerId);
    const cards = [...timeline.children];
    cards[from].classList.add('dragging');
    let to = from;
    const over = (y) => {
      const found = cards.findIndex((card) => { const box = card.getBoundingClientRect(); return y < box.top + box.height / 2; });
      return found === -1 ? cards.length - 1 : found > from ? found - 1 : found;
    };
    const onMove = (e) => {
      to = over(e.clientY);
      cards.forEach((card, i) => card.classList.toggle('drop-here', i === to && to !== from));
      if (e.clientY < 40) window.scrollBy(0, -20);
      else if (e.clientY > window.innerHeight - 40) window.scrollBy(0, 20);
    };
    const onUp = () => {
      handle.removeEventListener('pointermove', onMove);
      handle.removeEventListener('pointerup', onUp);
      handle.removeEventListener('pointercancel', onUp);
      cards.forEach((card) => card.classList.remove('dragging', 'drop-here'));
      if (to !== from) move(from, to);
    };
    handle.addEventListener('pointermove', onMove);
    handle.addEventListener('pointerup', onUp);
    handle.addEventListener('pointercancel', onUp);
  }

  function renderSteps() {
    const branches = new Set(state.steps.flatMap((s) => s.choices.map((c) => c.next)));
    timeline.replaceChildren(...state.steps.map((step, index) => {
      const input = (key, attrs = {}) => {
        const node = el('input', { type: 'text', value: step[key] ?? '', ...attrs });
        node.addEventListener('input', () => { step[key] = attrs.type === 'number' ? (node.value === '' ? '' : Number(node.value)) : node.value; check(); });
        // A renamed step: its card follows at once, the choices' lists when next opened.
        if (key === 'key') node.addEventListener('input', () => { node.closest('[data-step]').dataset.step = node.value; });
        return node;
      };
      const kind = el('select', {}, ...Object.entries(KINDS).map(([value, label]) => el('option', { value, selected: value === step.kind }, label)));
      kind.addEventListener('change', () => { step.kind = kind.value; renderSteps(); });
      const text = el('textarea', { rows: '2' }, step.text);
      text.addEventListener('input', () => { step.text = text.value; check(); });
      const goal = el('select', {}, el('option', { value: '' }, '—'), ...state.goals.map((g) => el('option', { value: g.key, selected: g.key === step.goal_key }, g.title || g.key)));
      goal.addEventListener('change', () => { step.goal_key = goal.value || null; check(); });
      const choices = el('div', { class: 'stack' }, ...step.choices.map((choice, j) => {
        const label = el('input', { type: 'text', value: choice.label, 'aria-label': `Choice ${j + 1} label`, maxlength: '100' });
        label.addEventListener('input', () => { choice.label = label.value; check(); });
        const next = el('select', { 'aria-label': `Choice ${j + 1} leads to` });
        const fill = () => next.replaceChildren(el('option', { value: '' }, 'leads to…'),
          ...state.steps.filter((s) => s !== step).map((s) => el('option', { value: s.key, selected: s.key === choice.next }, s.key)));
        fill();
        // Keys may have been renamed since the card was drawn.
        next.addEventListener('focus', fill);
        next.addEventListener('mousedown', fill);
        next.addEventListener('change', () => { choice.next = next.value; renderSteps(); });
        return el('div', { class: 'row' }, label, '→', next,
          el('button', { class: 'btn small', type: 'button', onclick: () => { step.choices.splice(j, 1); renderSteps(); } }, 'Remove choice'));
      }));
      const handle = el('button', { class: 'btn small drag-handle', type: 'button', 'aria-label': `Drag step ${index + 1}`, title: 'Drag to reorder (or use ↑ and ↓)' }, '⠿');
      handle.addEventListener('pointerdown', (event) => dragFrom(event, index, handle));
      const item = el('li', { class: 'card', 'data-step': step.key },
        el('div', { class: 'row', style: 'justify-content:space-between' },
          el('strong', {}, handle, ` Step ${index + 1}`, branches.has(step.key) ? el('span', { class: 'badge', style: 'margin-left:6px' }, 'branch: sent when chosen') : ''),
          el('div', { class: 'row' },
            el('button', { class: 'btn small', type: 'button', 'data-move': 'up', 'aria-label': `Move step ${index + 1} up`, disabled: index === 0, onclick: () => move(index, index - 1) }, '↑'),
            el('button', { class: 'btn small', type: 'button', 'data-move': 'down', 'aria-label': `Move step ${index + 1} down`, disabled: index === state.steps.length - 1, onclick: () => move(index, index + 1) }, '↓'),
            el('button', { class: 'btn small danger', type: 'button', disabled: state.steps.length === 1, onclick: () => { state.steps.splice(index, 1); renderSteps(); } }, 'Remove'))),
        el('div', { class: 'row' }, field('Key', input('key', { maxlength: '50' })), field('Day', input('day', { type: 'number', min: '0', max: '3650' })),
          field('At', input('at', { placeholder: '09:00' })), field('Kind', kind),
          step.kind === 'check_in' || step.kind === 'milestone' ? field('Goal', goal) : null),
        field(step.kind === 'message' || step.kind === 'resource' ? 'Instruction to the coach (or the text, without a model)' : 'Text', text),
        step.kind === 'resource' ? field('Document id', input('document_id')) : null,
        choices,
        branchCards(step, index),
        el('button', { class: 'btn small', type: 'button', onclick: () => { step.choices.push({ label: '', next: '' }); renderSteps(); } }, 'Add a choice'));
      return item;
    }));
    check();
  }

  // Each answer of a choice step, drawn as a card joined to the step and naming the step it
  // leads to (sent only when that answer is chosen).
  function branchCards(step, index) {
    if (!step.choices.length) return null;
    return el('ul', { class: 'branches', 'aria-label': `Branches of step ${index + 1}` }, ...step.choices.map((choice) => {
      const target = state.steps.find((s) => s.key === choice.next);
      return el('li', { class: 'branch', 'data-branch': choice.next || '' },
        el('span', { class: 'badge' }, choice.label.trim() || 'an answer'),
        target
          ? el('span', {}, ` → ${target.key} · ${KINDS[target.kind]} · day ${target.day} at ${target.at}${target.text ? ` · ${target.text.slice(0, 60)}` : ''}`)
          : el('span', { class: 'muted' }, ' → choose the step it leads to'));
    }));
  }

  function renderGoals() {
    goalsList.replaceChildren(...state.goals.map((goal, index) => {
      const input = (key, attrs = {}) => {
        const node = el('input', { type: 'text', value: goal[key] ?? '', ...attrs });
        node.addEventListener('input', () => { goal[key] = attrs.type === 'number' ? Number(node.value) : node.value; });
        return node;
      };
      const direction = el('select', {}, el('option', { value: 'increase', selected: goal.direction === 'increase' }, 'more is better'),
        el('option', { value: 'decrease', selected: goal.direction === 'decrease' }, 'less is better'));
      direction.addEventListener('change', () => { goal.direction = direction.value; });
      return el('div', { class: 'row card', 'data-goal-key': goal.key },
        field('Key', input('key')), field('Title', input('title')), field('Metric', input('metric')), field('Unit', input('unit')),
        field('Target', input('target', { type: 'number' })), field('Direction', direction),
        el('button', { class: 'btn small danger', type: 'button', onclick: () => { state.goals.splice(index, 1); renderGoals(); renderSteps(); } }, 'Remove goal'));
    }));
  }

  function definition() {
    return {
      name: state.name.trim(),
      description: state.description.trim() || null,
      goals: state.goals,
      steps: state.steps.map((s) => ({
        key: s.key.trim(), day: Number(s.day), at: s.at, kind: s.kind, text: s.text,
        goal_key: s.goal_key || null, document_id: s.document_id || null,
        ...(s.choices.length ? { choices: s.choices.map((c) => ({ label: c.label.trim(), next: c.next })) } : {}),
      })),
    };
  }

  async function save() {
    if (check().length) throw new Error('Fix the steps above first.');
    const saved = state.id
      ? await api('PUT', `/api/v1/programs/${encodeURIComponent(state.id)}`, definition())
      : await api('POST', '/api/v1/programs', definition());
    Object.assign(state, { id: saved.id, version: saved.version, status: saved.status });
    header.querySelector('[data-status]').textContent = `${saved.status} · v${saved.version}`;
    header.querySelector('h1').textContent = state.name.trim();
    history.replaceState(null, '', `#/programs?id=${encodeURIComponent(saved.id)}`);
    return saved;
  }

  const form = el('form', { class: 'stack' });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(form, async () => {
      try { const saved = await save(); toast(`Saved as version ${saved.version} (a draft).`); } catch (error) { status.replaceChildren(alertBox(explain(error))); }
    });
  });
  const publish = el('button', { class: 'btn', type: 'button', onclick: () => busy(form, async () => {
    try {
      const saved = await save();
      if (!await confirmAction(`Publish version ${saved.version}? People enrolled from now on follow it; those enrolled already stay on their version.`, 'Publish')) return;
      const published = await api('POST', `/api/v1/programs/${encodeURIComponent(saved.id)}/publish`);
      header.querySelector('[data-status]').textContent = `published · v${published.published_version || saved.version}`;
      toast('Published.');
    } catch (error) { status.replaceChildren(alertBox(explain(error))); }
  }) }, 'Save and publish');
  form.append(status,
    field('Name', name), field('Description', description),
    el('h2', {}, 'Goals'), goalsList,
    el('button', { class: 'btn small', type: 'button', onclick: () => { state.goals.push({ key: `goal${state.goals.length + 1}`, title: '', metric: '', unit: '', baseline: 0, target: 1, direction: 'increase' }); renderGoals(); renderSteps(); } }, 'Add a goal'),
    el('h2', {}, 'Steps'), el('p', { class: 'small muted' }, 'Drag a step, or use ↑ and ↓, to reorder. Day 0 is the day a person enrols; times are in their own time zone.'),
    timeline,
    el('button', { class: 'btn small', type: 'button', onclick: () => { state.steps.push(blankStep(state.steps.length)); renderSteps(); } }, 'Add a step'),
    el('div', { class: 'row' }, el('button', { class: 'btn primary', type: 'submit' }, 'Save draft'), publish));
  main.append(el('p', {}, el('a', { href: '#/programs' }, '← Programs')), header, form, preview(state));
  renderGoals();
  renderSteps();
}

// Try it as an end user: a test person on a test clock, enrolled in the published version,
// whose chat is the real widget drawn beside the builder (live, with their visitor token). The
// clock buttons play the program forward; each step arrives in the widget as the person would
// see it, and the creator answers check-ins and choices there.
function preview(state) {
  const frame = el('div', { class: 'preview-frame try-frame', id: 'program-try-widget', 'aria-label': 'The test person\'s chat' });
  const clockText = el('span', { class: 'small muted', 'data-clock': '' });
  const person = {};
  const nextButton = el('button', { class: 'btn small', type: 'button', disabled: true, onclick: () => move('next') }, 'Next step');
  function show(clock) {
    clockText.textContent = `Their clock: ${clock.now.replace('T', ' ').slice(0, 16)} UTC`;
    person.next = clock.next_message_at || null;
    nextButton.disabled = !person.next;
    nextButton.textContent = person.next ? `Next step (${person.next.replace('T', ' ').slice(5, 16)})` : 'Next step (none planned)';
  }
  async function move(by) {
    try {
      const clock = await get(`/api/v1/test-clocks/${person.clock}`);
      const to = by === 'next' ? clock.next_message_at : new Date(Date.parse(clock.now) + by * 3600 * 1000).toISOString();
      if (!to) return show(clock);
      show(await api('POST', `/api/v1/test-clocks/${person.clock}/advance`, { to: new Date(Math.max(Date.parse(to), Date.parse(clock.now))).toISOString() }));
    } catch (error) { toast(explain(error), 'error'); }
  }
  const controls = el('div', { class: 'row', hidden: true },
    el('button', { class: 'btn small', type: 'button', onclick: () => move(1) }, '+1 hour'),
    nextButton,
    el('button', { class: 'btn small', type: 'button', onclick: () => move(24) }, '+1 day'), clockText);
  const start = el('button', { class: 'btn', type: 'button', onclick: async () => {
    try {
      if (!state.id) throw new Error('Save and publish the program first.');
      const now = new Date(); now.setUTCHours(7, 0, 0, 0);
      person.clock = (await api('POST', '/api/v1/test-clocks', { now: now.toISOString() })).id;
      person.user = (await api('POST', '/api/v1/end-users', { name: 'Test person', time_zone: 'UTC', test_clock_id: person.clock, consent: true })).id;
      await api('POST', `/api/v1/programs/${encodeURIComponent(state.id)}/enrollments`, { end_user_id: person.user });
      const { token } = await api('POST', `/api/v1/end-users/${person.user}/session`);
      const profile = await get(`/api/v1/end-users/${person.user}`);
      const { slug } = await get('/api/v1/coach');
      const conversation = profile.conversations[0];
      frame.replaceChildren();
      document.body.append(el('script', { src: '/widget.js', 'data-coach': slug, 'data-token': token, 'data-mount': '#program-try-widget',
        ...(conversation ? { 'data-conversation': conversation.id } : {}) }));
      controls.hidden = false;
      frame.hidden = false;
      start.hidden = true;
      show(await get(`/api/v1/test-clocks/${person.clock}`));
    } catch (error) { toast(explain(error), 'error'); }
  } }, 'Try it as an end user');
  frame.hidden = true;
  return el('section', { class: 'card', 'aria-label': 'Try it as an end user' },
    el('h2', { style: 'margin-top:0' }, 'Try it'), el('p', { class: 'small muted' }, 'A test person on a test clock follows the published version in the real chat; nobody real is messaged. Answer their check-ins and choices in the chat.'),
    start, controls, frame);
}
