// The dashboard: a hash router, the signed-in shell (navigation) and the screens.
import { signedIn, signOut, get, explain, onSessionChange } from './api.js';
import { el, toast } from './ui.js';
import { authScreen } from './auth.js';
import { onboarding } from './onboarding.js';
import { knowledge } from './knowledge.js';
import { settings } from './settings.js';
import { testChat } from './testchat.js';
import { home } from './home.js';
import { inbox } from './inbox.js';
import { gaps } from './gaps.js';
import { analytics } from './analytics.js';
import { team } from './team.js';
import { owner } from './owner.js';
import { channels } from './channels.js';
import { people } from './people.js';
import { programs } from './programs.js';
import { rules } from './rules.js';
import { outcomes } from './outcomes.js';
import { account } from './security.js';
import { privacy } from './privacy.js';

const app = document.getElementById('app');
const screens = {
  '': { title: 'Overview', render: home },
  welcome: { title: 'Get started', render: onboarding },
  knowledge: { title: 'Knowledge', render: knowledge },
  settings: { title: 'Coach settings', render: settings },
  test: { title: 'Test chat', render: testChat },
  inbox: { title: 'Inbox', render: inbox },
  gaps: { title: 'Knowledge gaps', render: gaps },
  analytics: { title: 'Analytics', render: analytics },
  people: { title: 'People', render: people },
  programs: { title: 'Programs', render: programs },
  rules: { title: 'Nudge rules', render: rules },
  outcomes: { title: 'Outcomes', render: outcomes },
  channels: { title: 'Channels', render: channels },
  team: { title: 'Team and keys', render: team },
  server: { title: 'This server', render: owner },
  account: { title: 'Your account', render: account },
  privacy: { title: 'Data and privacy', render: privacy },
};
const publicScreens = ['signin', 'signup', 'forgot'];

let me = null;
/** The signed-in member, loaded once per sign-in. */
export async function currentUser(reload = false) {
  if (!me || reload) me = await get('/api/v1/auth/me');
  return me;
}

export function navigate(route) {
  if (location.hash === `#/${route}`) render();
  else location.hash = `#/${route}`;
}

function parseHash() {
  const [path, query] = location.hash.replace(/^#\/?/, '').split('?');
  return { route: path || '', params: new URLSearchParams(query || '') };
}

let cleanup = null;
async function render() {
  const { route, params } = parseHash();
  if (cleanup) { cleanup(); cleanup = null; }
  if (publicScreens.includes(route)) {
    if (signedIn() && route !== 'signup') return navigate('');
    app.className = '';
    app.replaceChildren(await authScreen(route, params));
    document.title = 'Compañero';
    focusHeading();
    return;
  }
  if (!signedIn()) return navigate(signInRoute(route, params));
  const screen = screens[route] || screens[''];
  let user;
  try {
    user = await currentUser();
  } catch (error) {
    if (error.status === 401) { await signOut(); return onPublicScreen() ? undefined : navigate('signin'); }
    app.replaceChildren(el('main', { class: 'content', id: 'main' }, el('div', { class: 'alert error', role: 'alert' }, explain(error))));
    return;
  }
  const main = el('main', { class: 'content', id: 'main', tabindex: '-1' });
  app.className = 'shell';
  app.replaceChildren(shell(route, user), main);
  document.title = `${screen.title} · Compañero`;
  try {
    cleanup = await screen.render(main, { user, params, navigate }) || null;
  } catch (error) {
    main.replaceChildren(el('div', { class: 'alert error', role: 'alert' }, explain(error)));
  }
  focusHeading();
}

/** The sign-in screen, coming back to `route` after; a set-up token in the link is kept. */
function signInRoute(route, params) {
  const query = new URLSearchParams();
  if (route) query.set('next', route);
  if (params.get('setup_token')) query.set('setup_token', params.get('setup_token'));
  const text = query.toString();
  return text ? `signin?${text}` : 'signin';
}

function onPublicScreen() {
  return publicScreens.includes(parseHash().route);
}

/** Another tab signed in or out (they share one session), or this tab's session ended. */
function sessionChanged(change, here) {
  me = null;
  const { route, params } = parseHash();
  if (change === 'signed-out') {
    if (onPublicScreen()) return;
    toast(here ? 'Your session has ended. Please sign in again.' : 'You signed out in another tab.');
    navigate(signInRoute(route, new URLSearchParams()));
  } else if (onPublicScreen()) {
    if (route !== 'signup') navigate(params.get('next') || '');
  } else {
    render();
  }
}

function focusHeading() {
  const heading = app.querySelector('h1');
  if (heading) { heading.setAttribute('tabindex', '-1'); heading.focus({ preventScroll: true }); }
}

function shell(route, user) {
  const link = (to, label) => el('a', { class: 'item', href: `#/${to}`, 'aria-current': route === to ? 'page' : false }, label);
  return el('nav', { class: 'nav', 'aria-label': 'Dashboard' },
    el('a', { class: 'logo', href: '#/' }, el('img', { src: '/favicon.svg', alt: '' }), 'Compañero'),
    link('', 'Overview'), link('inbox', 'Inbox'), link('people', 'People'), link('programs', 'Programs'), link('rules', 'Nudge rules'), link('knowledge', 'Knowledge'), link('gaps', 'Knowledge gaps'),
    link('analytics', 'Analytics'), link('outcomes', 'Outcomes'), link('channels', 'Channels'), link('settings', 'Coach settings'), link('test', 'Test chat'),
    user.role === 'admin' ? link('team', 'Team and keys') : null, link('privacy', 'Data and privacy'),
    user.is_owner ? link('server', 'This server') : null, link('account', 'Your account'),
    link('welcome', 'Get started'),
    el('div', { class: 'spacer' }),
    el('div', { class: 'who' }, `${user.full_name} · ${user.role}`),
    el('button', { class: 'btn small', type: 'button', onclick: async () => { await signOut(); me = null; toast('Signed out.'); navigate('signin'); } }, 'Sign out'),
    el('button', { class: 'btn small', type: 'button', onclick: async () => { await signOut(true); me = null; toast('Signed out on every device.'); navigate('signin'); } }, 'Sign out everywhere'));
}

export function resetUser() {
  me = null;
}

onSessionChange(sessionChanged);
window.addEventListener('hashchange', render);
render();
