// Sign in, sign up (also the first-run owner set-up and invitations), forgotten password.
import { signIn, signUp, publicGet, publicPost, explain } from './api.js';
import { el, field, alertBox, busy } from './ui.js';
import { secondStep } from './security.js';
import { navigate, resetUser } from './main.js';

function frame(title, intro, form, footer) {
  return el('main', { class: 'auth', id: 'main' },
    el('div', { class: 'brand' }, el('img', { src: '/favicon.svg', alt: '' }), 'Compañero'),
    el('div', { class: 'card' }, el('h1', {}, title), intro ? el('p', { class: 'muted' }, intro) : null, form),
    el('p', { class: 'small', style: 'margin-top:16px' }, footer));
}

function input(type, name, attrs = {}) {
  return el('input', { type, name, required: true, ...attrs });
}

/** Shows an API error on the field it concerns, or above the form. */
function showError(form, error, fields) {
  const status = form.querySelector('.status');
  status.replaceChildren();
  const target = { weak_password: fields.password, email_taken: fields.email, invalid_credentials: fields.password,
    setup_token_required: fields.setupToken }[error.code];
  if (target) target.setError(explain(error));
  else status.append(alertBox(explain(error)));
}

export async function authScreen(route, params) {
  const next = params.get('next') || '';
  if (route === 'forgot') return forgot();
  if (route === 'signup') return signup(params);
  const email = field('Email', input('email', 'email', { autocomplete: 'email' }));
  const password = field('Password', input('password', 'password', { autocomplete: 'current-password' }));
  const form = el('form', { novalidate: true }, el('div', { class: 'status' }), email, password,
    el('button', { class: 'btn primary', type: 'submit' }, 'Sign in'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    [email, password].forEach((f) => f.setError(''));
    busy(form, async () => {
      try {
        await signIn(form.email.value.trim(), form.password.value);
        resetUser();
        navigate(next);
      } catch (error) {
        if (error.code === 'mfa_required' || error.code === 'mfa_enrollment_required') {
          await secondStep(form.closest('.card'), error, () => { resetUser(); navigate(next); })
            .catch((failure) => showError(form, failure, { email, password }));
          return;
        }
        showError(form, error, { email, password });
      }
    });
  });
  const instance = await publicGet('/api/v1/instance').catch(() => null);
  if (instance && instance.needs_owner) return signup(params, true);
  const footer = [el('a', { href: '#/forgot' }, 'Forgot your password?')];
  if (instance && instance.signup === 'open') footer.push(' · ', el('a', { href: '#/signup' }, 'Create an account'));
  return frame('Sign in', null, form, footer);
}

async function signup(params, owner = false) {
  const invitation = params.get('invitation');
  const instance = await publicGet('/api/v1/instance').catch(() => ({ signup: 'open', needs_owner: false }));
  owner = owner || instance.needs_owner;
  if (!owner && !invitation && instance.signup !== 'open') {
    return frame('Sign-up is closed', instance.signup === 'invite'
      ? 'This Compañero accepts new accounts by invitation only. Ask its owner for an invitation link.'
      : 'This Compañero does not accept new accounts.', null, el('a', { href: '#/signin' }, 'Back to sign in'));
  }
  const setupToken = owner ? setupTokenField(params) : null;
  const name = field('Your name', input('text', 'full_name', { autocomplete: 'name' }));
  const email = field('Email', input('email', 'email', { autocomplete: 'email' }));
  const password = field('Password', input('password', 'password', { autocomplete: 'new-password', minlength: '10' }),
    'At least 10 characters. A few unrelated words make a strong password you can remember.');
  const form = el('form', { novalidate: true }, el('div', { class: 'status' }), setupToken, name, email, password,
    el('button', { class: 'btn primary', type: 'submit' }, owner ? 'Set up Compañero' : 'Create account'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    [setupToken, name, email, password].forEach((f) => f && f.setError(''));
    let valid = true;
    if (setupToken && !form.setup_token.value.trim()) { setupToken.setError('Enter the set-up token.'); valid = false; }
    if (!form.full_name.value.trim()) { name.setError('Tell us your name.'); valid = false; }
    if (!/^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(form.email.value.trim())) { email.setError('Enter an email address like ana@example.com.'); valid = false; }
    if (form.password.value.length < 10) { password.setError('Use at least 10 characters.'); valid = false; }
    if (!valid) return;
    busy(form, async () => {
      try {
        await signUp({ full_name: form.full_name.value.trim(), email: form.email.value.trim(), password: form.password.value,
          invitation: invitation || undefined, setup_token: setupToken ? form.setup_token.value.trim() : undefined });
        if (setupToken) forgetSetupToken();
        resetUser();
        navigate(invitation ? '' : 'welcome');
      } catch (error) {
        showError(form, error, { email, password, setupToken });
      }
    });
  });
  return frame(owner ? 'Set up your Compañero' : 'Create your account',
    owner ? 'You are the first person here: your account will own this server.' : 'Build a coach that answers from your own material.',
    form, el('a', { href: '#/signin' }, 'I already have an account'));
}

/** The first-run set-up token, filled in from a link that carries it (`?setup_token=`, before or
 * after the `#`). */
function setupTokenField(params) {
  const given = params.get('setup_token') || new URLSearchParams(location.search).get('setup_token') || '';
  return field('Set-up token', input('text', 'setup_token', { value: given, autocomplete: 'off', spellcheck: 'false', autocapitalize: 'off' }),
    ['Printed by ', el('code', {}, 'companero serve'), ' when it first started, also in the file ', el('code', {}, 'setup-token'),
      ' in the data folder.']);
}

/** The token is spent once the owner exists: it leaves the address bar. */
function forgetSetupToken() {
  const search = new URLSearchParams(location.search);
  if (!search.has('setup_token')) return;
  search.delete('setup_token');
  history.replaceState(null, '', `${location.pathname}${search.toString() ? `?${search}` : ''}${location.hash}`);
}

async function forgot() {
  const instance = await publicGet('/api/v1/instance').catch(() => null);
  if (instance && instance.email === false) {
    return frame('Reset your password', 'This server does not send e-mail, so it cannot mail you a reset link.',
      el('div', { class: 'alert warn', 'data-test': 'no-email' },
        'Ask an admin of your team for a reset link: they can make one on the Team and keys screen. ',
        'The operator of this server can also make one with ', el('code', {}, 'companero admin reset-link EMAIL'), '.'),
      el('a', { href: '#/signin' }, 'Back to sign in'));
  }
  const email = field('Email', input('email', 'email', { autocomplete: 'email' }));
  const form = el('form', { novalidate: true }, el('div', { class: 'status' }), email,
    el('button', { class: 'btn primary', type: 'submit' }, 'Send reset link'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(form, async () => {
      const status = form.querySelector('.status');
      try {
        await publicPost('/api/v1/auth/password-reset', { email: form.email.value.trim() });
        status.replaceChildren(alertBox('If an account uses this address, a link to choose a new password is on its way.', 'ok'));
      } catch (error) {
        status.replaceChildren(alertBox(explain(error)));
      }
    });
  });
  return frame('Reset your password', 'We will email you a link to choose a new one.', form, el('a', { href: '#/signin' }, 'Back to sign in'));
}
