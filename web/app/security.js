// Two-step sign-in: setting up an authenticator app (QR code, the secret to type, a first code),
// the recovery codes shown once, the second step of signing in, and "Your account", where a
// person turns it on or off and makes new recovery codes.
import { api, get, explain, publicPost, signInSecondStep } from './api.js';
import { el, field, toast, alertBox, busy, copyButton } from './ui.js';

/** An input for a 6-digit code, the way phones offer to fill one in. */
function codeInput(name = 'code') {
  return el('input', { type: 'text', name, inputmode: 'numeric', autocomplete: 'one-time-code', pattern: '[0-9 ]*',
    maxlength: '8', required: true, spellcheck: 'false' });
}

/** The QR code and the secret of an enrolment. */
export function enrollmentView(enrollment) {
  const qr = el('img', { class: 'qr', width: '200', height: '200', alt: 'QR code to scan with your authenticator app',
    src: `data:image/svg+xml;charset=utf-8,${encodeURIComponent(enrollment.qr_svg)}` });
  return el('div', { class: 'stack', 'data-test': 'enrollment' },
    el('ol', { class: 'small' },
      el('li', {}, 'Open an authenticator app on your phone (Google Authenticator, Microsoft Authenticator, 1Password, Aegis…).'),
      el('li', {}, 'Scan this QR code with it, or type the key below.'),
      el('li', {}, 'Enter the 6-digit code the app shows.')),
    qr,
    el('p', { class: 'small' }, 'Key: ', el('code', { 'data-test': 'mfa-secret' }, enrollment.secret), ' ',
      copyButton(() => enrollment.secret, 'Copy key')),
    el('p', { class: 'small muted' }, 'The key is shown only now. Anyone who has it can make your codes: keep it to yourself.'));
}

/** The ten recovery codes, shown once; `done` runs when the person says they kept them. */
export function recoveryCodesView(codes, done, doneLabel = 'I saved my recovery codes') {
  const text = codes.join('\n');
  const download = el('a', { class: 'btn small', download: 'companero-recovery-codes.txt',
    href: `data:text/plain;charset=utf-8,${encodeURIComponent(`Compañero recovery codes (each works once)\n\n${text}\n`)}` }, 'Download');
  return el('section', { class: 'card', 'data-test': 'recovery-codes', 'aria-labelledby': 'recovery-title' },
    el('h2', { id: 'recovery-title' }, 'Your recovery codes'),
    el('p', {}, 'If you lose your phone, each of these codes signs you in once instead of a code from the app. They are shown only now: keep them somewhere safe, like a password manager.'),
    el('ul', { class: 'codes' }, codes.map((c) => el('li', {}, el('code', {}, c)))),
    el('div', { class: 'row' }, copyButton(() => text, 'Copy codes'), download,
      el('button', { class: 'btn primary', type: 'button', onclick: done }, doneLabel)));
}

/** The second step of signing in, in the sign-in card: a code (or a recovery code), or, where
 * two-step sign-in is required and not set up yet, the set-up first. `signedIn(codes)` runs
 * once the session is stored (`codes`: new recovery codes, after a set-up). */
export async function secondStep(card, error, signedIn) {
  const challenge = error.details.challenge;
  const enrolling = error.code === 'mfa_enrollment_required';
  const enrollment = enrolling ? await publicPost('/api/v1/auth/login/mfa/enrollment', { challenge }) : null;
  let recovery = false;
  const input = codeInput();
  const code = field('Code from your authenticator app', input, enrolling ? null : 'Open the app on your phone: it shows a new code every 30 seconds.');
  const status = el('div', { class: 'status' });
  const toggle = el('button', { class: 'btn link', type: 'button', onclick: () => {
    recovery = !recovery;
    code.querySelector('label').textContent = recovery ? 'Recovery code' : 'Code from your authenticator app';
    Object.assign(input, recovery ? { inputMode: 'text', pattern: '.*', maxLength: 12, autocomplete: 'off' } : { inputMode: 'numeric', pattern: '[0-9 ]*', maxLength: 8, autocomplete: 'one-time-code' });
    toggle.textContent = recovery ? 'Use a code from the app instead' : 'Use a recovery code instead';
    input.value = '';
    input.focus();
  } }, 'Use a recovery code instead');
  const form = el('form', { novalidate: true }, status, code,
    el('button', { class: 'btn primary', type: 'submit' }, enrolling ? 'Turn on and sign in' : 'Verify'),
    enrolling ? null : el('p', { class: 'small' }, toggle));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    code.setError('');
    const value = input.value.trim();
    if (!value) { code.setError(recovery ? 'Enter one of your recovery codes.' : 'Enter the 6-digit code.'); return; }
    busy(form, async () => {
      try {
        const codes = await signInSecondStep(challenge, recovery ? { recovery_code: value } : { code: value });
        if (codes) card.replaceChildren(recoveryCodesView(codes, () => signedIn(codes), 'I saved them: continue'));
        else signedIn(null);
      } catch (failure) {
        if (failure.code === 'invalid_mfa_code') code.setError(explain(failure));
        else status.replaceChildren(alertBox(explain(failure)));
        if (failure.code === 'mfa_challenge_expired') form.querySelector('button[type=submit]').disabled = true;
      }
    });
  });
  card.replaceChildren(el('h1', {}, enrolling ? 'Set up two-step sign-in' : 'Two-step sign-in'),
    el('p', { class: 'muted' }, enrolling
      ? 'Your team requires a code from an authenticator app at every sign-in. Set it up now to continue.'
      : 'Your password was right. Now enter the code from your authenticator app.'),
    enrollment ? enrollmentView(enrollment) : null, form,
    el('p', { class: 'small' }, el('a', { href: '#/signin', onclick: (event) => { event.preventDefault(); location.reload(); } }, 'Back to sign in')));
  input.focus();
}

/** "Your account": two-step sign-in on or off, new recovery codes. */
export async function account(main, { user }) {
  const status = await get('/api/v1/auth/mfa');
  const section = el('section', { class: 'card', 'aria-labelledby': 'mfa-title' });
  main.append(el('h1', {}, 'Your account'),
    el('p', { class: 'muted' }, `${user.full_name} · ${user.email} · ${user.role}`), section);
  const reload = () => window.dispatchEvent(new HashChangeEvent('hashchange'));
  const heading = el('h2', { id: 'mfa-title' }, 'Two-step sign-in');

  if (!status.enabled) {
    const start = el('button', { class: 'btn primary', type: 'button' }, 'Set up two-step sign-in');
    section.append(heading,
      el('p', {}, 'Off. With it on, signing in takes your password and a code from an app on your phone, so a stolen password alone is not enough.'),
      status.required ? alertBox('Your team or this server requires it: set it up now.', 'warn') : null, start);
    start.addEventListener('click', async () => {
      let enrollment;
      try { enrollment = await api('POST', '/api/v1/auth/mfa/enrollment'); } catch (error) { toast(explain(error), 'error'); return; }
      const input = codeInput();
      const code = field('Code from the app', input);
      const form = el('form', { novalidate: true }, el('div', { class: 'status' }), code,
        el('button', { class: 'btn primary', type: 'submit' }, 'Turn on'));
      form.addEventListener('submit', (event) => {
        event.preventDefault();
        code.setError('');
        busy(form, async () => {
          try {
            const { recovery_codes: codes } = await api('POST', '/api/v1/auth/mfa/enrollment/confirm', { code: input.value.trim() });
            section.replaceChildren(heading, alertBox('Two-step sign-in is on.', 'ok'), recoveryCodesView(codes, reload));
          } catch (error) {
            if (error.code === 'invalid_mfa_code') code.setError(explain(error));
            else form.querySelector('.status').replaceChildren(alertBox(explain(error)));
          }
        });
      });
      section.replaceChildren(heading, enrollmentView(enrollment), form);
      input.focus();
    });
    return;
  }

  /** A form that takes a code (or a recovery code) and calls `submit` with it. */
  const withCode = (label, kind, submit, help) => {
    const input = el('input', { type: 'text', name: 'code', autocomplete: 'one-time-code', required: true, spellcheck: 'false' });
    const code = field('Code from the app, or a recovery code', input, help);
    const form = el('form', { novalidate: true, 'aria-label': label }, el('div', { class: 'status' }), code,
      el('button', { class: `btn ${kind}`, type: 'submit' }, label));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      code.setError('');
      const value = input.value.trim();
      const factor = /^[0-9 ]{6,8}$/.test(value) ? { code: value } : { recovery_code: value };
      busy(form, async () => {
        try { await submit(factor); } catch (error) {
          if (error.code === 'invalid_mfa_code') code.setError(explain(error));
          else form.querySelector('.status').replaceChildren(alertBox(explain(error)));
        }
      });
    });
    return form;
  };
  const since = status.enabled_at ? status.enabled_at.slice(0, 10) : '';
  section.append(heading,
    el('p', { 'data-test': 'mfa-on' }, `On since ${since}. `, el('strong', {}, `${status.recovery_codes_left} of 10`), ' recovery codes left.'),
    status.recovery_codes_left <= 3 ? alertBox('Few recovery codes are left: make new ones.', 'warn') : null,
    el('h3', {}, 'New recovery codes'),
    withCode('Make new recovery codes', '', async (factor) => {
      const { recovery_codes: codes } = await api('POST', '/api/v1/auth/mfa/recovery-codes', factor);
      section.replaceChildren(heading, recoveryCodesView(codes, reload));
    }, 'The old codes stop working.'),
    el('h3', {}, 'Turn it off'),
    status.required
      ? el('p', { class: 'muted' }, 'Your team or this server requires two-step sign-in, so it stays on.')
      : withCode('Turn off two-step sign-in', 'danger', async (factor) => {
        await api('DELETE', '/api/v1/auth/mfa', factor);
        toast('Two-step sign-in is off.');
        reload();
      }));
}

/** A switch that requires two-step sign-in of a team (`/api/v1/tenant/mfa-requirement`) or of
 * the whole server (`/api/v1/admin/mfa-requirement`). */
export function requirementSwitch(path, required, who) {
  const box = el('input', { type: 'checkbox', checked: required });
  const status = el('div', { role: 'status' });
  box.addEventListener('change', async () => {
    status.replaceChildren();
    try {
      const changed = await api('PUT', path, { required: box.checked });
      status.replaceChildren(alertBox(changed.required
        ? `Required. ${changed.signed_out === 1 ? '1 person without it was' : `${changed.signed_out} people without it were`} signed out; they set it up at their next sign-in.`
        : 'No longer required.', 'ok'));
    } catch (error) {
      box.checked = !box.checked;
      status.replaceChildren(el('div', { class: 'alert error', role: 'alert' }, explain(error),
        error.code === 'mfa_policy' ? [' ', el('a', { href: '#/account' }, 'Set it up on Your account')] : null));
    }
  });
  return el('div', { class: 'field' }, el('label', {}, box, ` Require two-step sign-in for ${who}`), status);
}
