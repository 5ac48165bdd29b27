// Get started: name the coach, give it documents, ask it something, share it.
import { api, get, explain } from './api.js';
import { el, field, alertBox, busy } from './ui.js';
import { uploader } from './knowledge.js';
import { askPanel } from './testchat.js';
import { shareCard } from './home.js';

const STEPS = ['Your coach', 'Knowledge', 'Try it', 'Share'];

export async function onboarding(main, { params, navigate }) {
  const step = Math.min(Math.max(Number(params.get('step') || 1), 1), STEPS.length);
  const go = (n) => navigate(`welcome?step=${n}`);
  main.append(el('h1', {}, 'Get started'),
    el('ol', { class: 'steps', 'aria-label': 'Steps' }, STEPS.map((label, i) =>
      el('li', { class: i + 1 < step ? 'done' : '', 'aria-current': i + 1 === step ? 'step' : false }, `${i + 1}. ${label}`))));
  const coach = await get('/api/v1/coach');
  const card = el('section', { class: 'card' });
  main.append(card);
  if (step === 1) {
    const name = field('Coach name', el('input', { type: 'text', name: 'name', value: coach.name, required: true }),
      'What your people will see, e.g. “Luna, your sleep coach”.');
    const persona = field('Persona and tone', el('textarea', { name: 'persona' }, coach.persona),
      'How the coach speaks: “Warm and direct. Short sentences. Use the client’s first name.”');
    const greeting = field('Greeting', el('input', { type: 'text', name: 'greeting', value: coach.greeting }));
    const form = el('form', {}, el('div', { class: 'status' }), name, persona, greeting,
      el('button', { class: 'btn primary', type: 'submit' }, 'Save and continue'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      busy(form, async () => {
        try {
          await api('PATCH', '/api/v1/coach', { name: form.name.value, persona: form.persona.value, greeting: form.greeting.value });
          go(2);
        } catch (error) {
          form.querySelector('.status').replaceChildren(alertBox(explain(error)));
        }
      });
    });
    card.append(el('h2', {}, 'Name your coach'), form);
  } else if (step === 2) {
    const done = el('button', { class: 'btn primary', type: 'button', onclick: () => go(3) }, 'Continue');
    card.append(el('h2', {}, 'Give it your material'),
      el('p', { class: 'muted' }, 'PDF, Word, HTML, Markdown or text. Your coach answers only from these.'),
      uploader(() => {}), el('div', { class: 'row', style: 'margin-top:16px' }, done,
        el('button', { class: 'btn link', type: 'button', onclick: () => go(3) }, 'Skip for now')));
  } else if (step === 3) {
    card.append(el('h2', {}, 'Ask it a question'),
      el('p', { class: 'muted' }, 'A question your clients would ask. You will see the sources it used.'),
      askPanel(), el('div', { class: 'row', style: 'margin-top:16px' }, el('button', { class: 'btn primary', type: 'button', onclick: () => go(4) }, 'Continue')));
  } else {
    const tenant = await get('/api/v1/tenant');
    card.replaceWith(shareCard(coach.slug, tenant.allowed_origins));
    main.append(el('p', { style: 'margin-top:16px' }, 'That’s it. Fine-tune the look and the rules in ',
      el('a', { href: '#/settings' }, 'Coach settings'), '.'));
  }
}
