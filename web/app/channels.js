// Channels: where end users reach the coach. The web is always on; a Telegram bot is
// connected with the token @BotFather gives, and the screen says how updates arrive.
import { api, get, explain } from './api.js';
import { el, field, toast, alertBox, busy, confirmAction, copyButton } from './ui.js';
import { currentUser } from './main.js';

export async function channels(main) {
  const user = await currentUser();
  const admin = user.role === 'admin';
  const list = el('div', { class: 'stack' });
  main.append(el('h1', {}, 'Channels'),
    el('p', { class: 'muted' }, 'Your coach answers, follows programs and sends check-ins on every channel below. ',
      'A person who uses two of them can link them by sending “link my account” in one and the code in the other.'), list);

  async function load() {
    const [{ channels: all }, telegram, whatsapp, { programs }] = await Promise.all([
      get('/api/v1/channels'), get('/api/v1/channels/telegram'), get('/api/v1/channels/whatsapp'), get('/api/v1/programs')]);
    const figures = (name) => all.find((c) => c.channel === name) || {};
    const card = telegramCard(telegram, figures('telegram'));
    if (telegram.connected) card.append(programLinks(telegram.bot_username, programs.filter((p) => p.published_version)));
    list.replaceChildren(webCard(figures('web')), card, whatsappCard(whatsapp, figures('whatsapp')));
  }

  const numbers = (f) => el('p', { class: 'small muted' },
    `${f.people || 0} people · ${f.received || 0} messages received · ${f.sent || 0} sent · ${f.queued || 0} waiting · ${f.failed || 0} failed`);

  function webCard(f) {
    return el('section', { class: 'card', 'data-channel': 'web' },
      el('div', { class: 'row', style: 'justify-content:space-between' }, el('h2', { style: 'margin:0' }, 'Website chat and widget'),
        el('span', { class: 'badge ready' }, 'On')), numbers(f),
      el('p', { class: 'small' }, 'Share your chat page or embed the widget from ', el('a', { href: '#/settings' }, 'Coach settings'), '.'));
  }

  function telegramCard(status, f) {
    const card = el('section', { class: 'card', 'data-channel': 'telegram' });
    const state = status.connected
      ? el('span', { class: `badge ${status.last_error ? 'failed' : 'ready'}` }, status.last_error ? 'Error' : 'Connected')
      : el('span', { class: 'badge' }, 'Not connected');
    card.append(el('div', { class: 'row', style: 'justify-content:space-between' }, el('h2', { style: 'margin:0' }, 'Telegram'), state));
    if (status.connected) {
      const how = status.mode === 'webhook'
        ? `Telegram sends messages to ${status.webhook_url}.`
        : 'This server asks Telegram for new messages (long polling), because it has no https public address. Set --public-url to an https address to use a webhook.';
      card.append(
        el('p', {}, 'Bot ', el('a', { href: `https://t.me/${status.bot_username}`, target: '_blank', rel: 'noopener' }, `@${status.bot_username}`),
          ` · token ${status.token_hint} · `, el('strong', { 'data-mode': status.mode }, status.mode === 'webhook' ? 'Webhook' : 'Polling')),
        el('p', { class: 'small muted' }, how), numbers(f),
        status.last_error ? alertBox(`Last error (${status.last_error_at.replace('T', ' ').slice(0, 16)} UTC): ${status.last_error}`) : null);
      if (admin) {
        card.append(el('button', { class: 'btn danger', type: 'button', onclick: async () => {
          if (!await confirmAction(`Disconnect @${status.bot_username}? People will get no more answers on Telegram.`, 'Disconnect')) return;
          try { await api('DELETE', '/api/v1/channels/telegram'); toast('Telegram disconnected.'); load(); } catch (error) { toast(explain(error), 'error'); }
        } }, 'Disconnect'));
      }
    } else if (admin) {
      const token = el('input', { type: 'text', name: 'bot_token', autocomplete: 'off', spellcheck: 'false', placeholder: '123456789:AA…', required: true });
      const form = el('form', {}, el('div', { class: 'status' }),
        field('Bot token', token, 'In Telegram, talk to @BotFather, send /newbot, and paste the token it gives you. It is checked with Telegram and stored encrypted.'),
        el('button', { class: 'btn primary', type: 'submit' }, 'Connect'));
      form.addEventListener('submit', (event) => {
        event.preventDefault();
        busy(form, async () => {
          try {
            const connected = await api('PUT', '/api/v1/channels/telegram', { bot_token: token.value.trim() });
            toast(`Connected @${connected.bot_username}.`);
            load();
          } catch (error) {
            form.querySelector('.status').replaceChildren(alertBox(explain(error)));
          }
        });
      });
      card.append(form);
    } else {
      card.append(el('p', { class: 'small muted' }, 'An admin of this coach can connect a Telegram bot.'));
    }
    return card;
  }

  // A link that opens the bot and enrols whoever presses Start in the program.
  function programLinks(bot, published) {
    if (!published.length) return el('p', { class: 'small muted' }, 'Publish a program to get a Telegram link that enrols people in it.');
    return el('div', { class: 'stack' }, el('h3', {}, 'Program links'),
      ...published.map((program) => {
        const link = `https://t.me/${bot}?start=p-${program.id}`;
        return el('div', { class: 'row', 'data-program-link': program.id }, el('span', {}, `${program.name}: `), el('code', {}, link), copyButton(link));
      }));
  }

  function whatsappCard(status, f) {
    const card = el('section', { class: 'card', 'data-channel': 'whatsapp' });
    const state = status.connected
      ? el('span', { class: `badge ${status.last_error ? 'failed' : 'ready'}` }, status.last_error ? 'Error' : 'Connected')
      : el('span', { class: 'badge' }, 'Not connected');
    card.append(el('div', { class: 'row', style: 'justify-content:space-between' }, el('h2', { style: 'margin:0' }, 'WhatsApp'), state));
    if (status.connected) {
      card.append(
        el('p', {}, `Number ${status.display_phone_number || status.phone_number_id} · token ${status.token_hint}`),
        el('p', { class: 'small' }, 'In Meta\'s console (WhatsApp → Configuration → Webhook), paste these and subscribe to “messages”:'),
        el('div', { class: 'row' }, el('span', {}, 'Callback URL: '), el('code', { 'data-callback-url': '' }, status.callback_url), copyButton(status.callback_url)),
        el('div', { class: 'row' }, el('span', {}, 'Verify token: '), el('code', { 'data-verify-token': '' }, status.verify_token), copyButton(status.verify_token)),
        status.callback_url.startsWith('https://') ? null : alertBox('Meta only calls https addresses: start the server with --public-url https://… behind TLS.', 'warn'),
        el('p', { class: 'small muted' }, status.template
          ? `More than 24 hours after a person last wrote, check-ins go out as the template “${status.template.name}” (${status.template.language}).`
          : 'More than 24 hours after a person last wrote, WhatsApp refuses free messages: without a template, those check-ins are skipped.'),
        numbers(f),
        status.last_error ? alertBox(`Last error (${status.last_error_at.replace('T', ' ').slice(0, 16)} UTC): ${status.last_error}`) : null);
      if (admin) {
        card.append(el('button', { class: 'btn danger', type: 'button', onclick: async () => {
          if (!await confirmAction('Disconnect this WhatsApp number? People will get no more answers there.', 'Disconnect')) return;
          try { await api('DELETE', '/api/v1/channels/whatsapp'); toast('WhatsApp disconnected.'); load(); } catch (error) { toast(explain(error), 'error'); }
        } }, 'Disconnect'));
      }
      return card;
    }
    if (!admin) {
      card.append(el('p', { class: 'small muted' }, 'An admin of this coach can connect a WhatsApp number.'));
      return card;
    }
    const input = (name, placeholder) => el('input', { type: 'text', name, placeholder, autocomplete: 'off', spellcheck: 'false' });
    const id = input('phone_number_id', '106540352242922');
    const token = input('access_token', 'EAAG…');
    const secret = input('app_secret', '');
    const template = input('template_name', 'coach_checkin');
    const language = input('template_language', 'en_US');
    [id, token, secret].forEach((i) => { i.required = true; });
    const form = el('form', {}, el('div', { class: 'status' }),
      field('Phone number id', id, 'Meta for Developers → your app → WhatsApp → API Setup: the number\'s id, not the number.'),
      field('Access token', token, 'A permanent token of a system user with whatsapp_business_messaging. Stored encrypted.'),
      field('App secret', secret, 'App settings → Basic. Every webhook call is checked against it.'),
      field('Template for after 24 hours (optional)', template, 'An approved template whose first body parameter carries the message.'),
      field('Template language', language),
      el('button', { class: 'btn primary', type: 'submit' }, 'Connect'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      busy(form, async () => {
        try {
          const body = { phone_number_id: id.value.trim(), access_token: token.value.trim(), app_secret: secret.value.trim() };
          if (template.value.trim()) body.template = { name: template.value.trim(), language: language.value.trim() || 'en_US' };
          await api('PUT', '/api/v1/channels/whatsapp', body);
          toast('WhatsApp connected. Now paste the callback URL and verify token into Meta\'s console.');
          load();
        } catch (error) {
          form.querySelector('.status').replaceChildren(alertBox(explain(error)));
        }
      });
    });
    card.append(form);
    return card;
  }

  await load();
}
