// Coach settings: persona, messages, answering rules, branding with a live widget preview,
// allowed websites.
import { api, get, explain } from './api.js';
import { el, field, toast, alertBox, busy } from './ui.js';

export async function settings(main) {
  const [coach, tenant, ready] = await Promise.all([
    get('/api/v1/coach'), get('/api/v1/tenant'), fetch('/readyz').then((r) => r.json()).catch(() => null),
  ]);
  const text = (name, value, attrs = {}) => el('input', { type: 'text', name, value: value ?? '', ...attrs });
  const area = (name, value) => el('textarea', { name }, value ?? '');
  const threshold = el('input', { type: 'range', name: 'confidence_threshold', min: '0', max: '1', step: '0.05', value: String(coach.confidence_threshold) });
  const thresholdValue = el('output', { for: 'threshold' }, coach.confidence_threshold.toFixed(2));
  threshold.id = 'threshold';
  threshold.addEventListener('input', () => { thresholdValue.textContent = Number(threshold.value).toFixed(2); });
  const select = (name, options, value) => el('select', { name }, options.map(([v, label]) => el('option', { value: v, selected: v === value }, label)));
  const color = el('input', { type: 'color', name: 'brand_color', value: coach.brand_color });
  const model = ready && ready.components && ready.components.llm;
  const thresholdField = field('Confidence threshold', threshold, 'Answers the knowledge base supports less than this get the fallback.');
  threshold.after(thresholdValue);

  const form = el('form', { novalidate: true },
    el('div', { class: 'status' }),
    el('section', { class: 'card' }, el('h2', {}, 'Persona'),
      field('Name', text('name', coach.name, { required: true })),
      field('Tone and instructions', area('persona', coach.persona), 'How the coach speaks and what it should always do.'),
      field('Picture (https address)', text('avatar_url', coach.avatar_url, { type: 'url', placeholder: 'https://…/me.png' }), 'Empty: the first letter of the name.')),
    el('section', { class: 'card', style: 'margin-top:16px' }, el('h2', {}, 'Messages'),
      field('Greeting', text('greeting', coach.greeting), 'The first message in every chat.'),
      field('Opening message', text('opening_message', coach.opening_message), 'Shown beside the closed widget bubble to invite a question. Empty: none.'),
      field('When it does not know', area('fallback_message', coach.fallback_message), 'Said instead of guessing; the question lands in knowledge gaps.')),
    el('section', { class: 'card', style: 'margin-top:16px' }, el('h2', {}, 'Answers'),
      thresholdField,
      field('How strictly to keep to your documents', select('strictness', [
        ['strict', 'Strict: only what the documents say'],
        ['balanced', 'Balanced: facts checked, advice allowed'],
        ['open', 'Open: chattier, sources only marked'],
      ], coach.strictness),
      'Strict quotes or leaves out every sentence whose numbers, names or conditions the cited passage does not support. Balanced does that for numbers, durations, amounts, dates and names, and keeps other sentences without a source. Open shows what the model wrote, citing what it can.'),
      field('Answer length', select('answer_length', [['short', 'Short'], ['medium', 'Medium'], ['long', 'Long']], coach.answer_length)),
      field('Creativity (temperature)', el('input', { type: 'number', name: 'temperature', min: '0', max: '1.5', step: '0.1', value: String(coach.temperature) }), '0 always picks the likeliest words; up to 1.5.'),
      el('div', { class: 'field' }, el('label', {}, el('input', { type: 'checkbox', name: 'redact_pii', checked: coach.redact_pii }), ' Hide emails, phone and card numbers from the model')),
      el('p', { class: 'small muted' }, 'Model: ', model && model.model ? model.model : 'the server’s chat model',
        ' (chosen when the server starts: companero serve --llm …).')),
    el('section', { class: 'card', style: 'margin-top:16px' }, el('h2', {}, 'Look and place'),
      field('Main colour', color, 'Text on it switches between black and white for contrast.'),
      field('Widget position', select('widget_position', [['right', 'Bottom right'], ['left', 'Bottom left']], coach.widget_position)),
      field('Websites allowed to show the widget', area('allowed_origins', tenant.allowed_origins.join('\n')),
        'One per line, like https://www.example.com. The chat page always works.')),
    el('div', { class: 'row', style: 'margin-top:16px' }, el('button', { class: 'btn primary', type: 'submit' }, 'Save settings')));

  const previewFrame = el('div', { class: 'preview-frame', id: 'widget-preview', role: 'img', 'aria-label': 'Live preview of the widget' });
  main.append(el('h1', {}, 'Coach settings'),
    el('div', { class: 'split' }, form, el('aside', {}, el('h2', {}, 'Preview'), previewFrame)));

  // The real widget, drawn offline inside the frame and restyled on every change.
  const script = el('script', { src: "/widget.js", 'data-coach': coach.slug, 'data-preview': '', 'data-mount': '#widget-preview' });
  document.body.append(script);
  const current = () => ({
    name: form.name.value, greeting: form.greeting.value, opening_message: form.opening_message.value,
    brand_color: form.brand_color.value, widget_position: form.widget_position.value, avatar_url: form.avatar_url.value,
  });
  form.addEventListener('input', () => previewFrame.dispatchEvent(new CustomEvent('companero-preview', { detail: current() })));

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(form, async () => {
      const status = form.querySelector('.status');
      status.replaceChildren();
      try {
        await api('PATCH', '/api/v1/coach', {
          ...current(), persona: form.persona.value, fallback_message: form.fallback_message.value,
          confidence_threshold: Number(form.confidence_threshold.value), answer_length: form.answer_length.value,
          strictness: form.strictness.value, temperature: Number(form.temperature.value), redact_pii: form.redact_pii.checked,
        });
        const origins = form.allowed_origins.value.split(/\s+/).map((o) => o.trim()).filter(Boolean);
        await api('PATCH', '/api/v1/tenant', { allowed_origins: origins });
        toast('Settings saved.');
        status.replaceChildren(alertBox('Saved. The chat page and the widget use the new settings now.', 'ok'));
      } catch (error) {
        status.replaceChildren(alertBox(explain(error)));
        status.scrollIntoView({ block: 'nearest' });
      }
    });
  });
  return () => script.remove();
}
