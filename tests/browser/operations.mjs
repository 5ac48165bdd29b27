// Running a live coach from the dashboard, in headless Chromium against a server with the real
// test models (tests/browser.rs): the inbox (take over, reply, seen on the end user's chat page),
// a knowledge gap answered and then used by the coach, analytics from real conversations, a
// staff invitation with a restricted role, API keys; screenshots of each screen.
//
// Environment: COMPANERO_URL, COMPANERO_SLUG, COMPANERO_EMAIL and COMPANERO_PASSWORD (the
// creator, an admin), COMPANERO_SCREENSHOTS, CHROMIUM (default /usr/bin/chromium).
import { check, launch, onBase, screenshots, step, watch } from './harness.mjs';

const base = process.env.COMPANERO_URL.replace(/\/$/, '');
const slug = process.env.COMPANERO_SLUG;
const ANSWER_MS = 120_000;
const host = `companero-chat#companero-chat-${slug}`;

const browser = await launch();
const problems = [];
async function open(viewport = { width: 1280, height: 860 }) {
  const context = await browser.newContext({ viewport });
  const page = watch(await context.newPage(), problems);
  return { context, page };
}

async function signIn(page, email, password) {
  await page.goto(`${base}/app#/signin`);
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: /^Hello/ }).waitFor();
}

async function endUserAsks(page, question) {
  const before = await page.locator('.msg.assistant[data-role="assistant"]').count();
  const input = page.getByLabel('Your message');
  await input.fill(question);
  await input.press('Enter');
  await page.waitForFunction(([n]) => {
    const root = document.querySelector('companero-chat').shadowRoot;
    return root.querySelectorAll('.msg.assistant[data-role="assistant"]').length > n;
  }, [before], { timeout: ANSWER_MS });
}

try {
  const { page: visitor } = await open();
  const { page } = await open();

  await step('an end user asks; one question the coach cannot answer', async () => {
    await visitor.goto(`${base}/c/${slug}`);
    await visitor.waitForSelector(`${host}[data-state="ready"]`, { state: 'attached' });
    await endUserAsks(visitor, 'Do you ship to Canada?');
    await endUserAsks(visitor, 'How many days does it take to get a refund?');
  });

  await step('the inbox: take over, reply, seen by the end user; hand back', async () => {
    await signIn(page, process.env.COMPANERO_EMAIL, process.env.COMPANERO_PASSWORD);
    await page.getByRole('link', { name: 'Inbox' }).click();
    const item = page.locator('[data-conversation]').first();
    await item.waitFor();
    check(await item.locator('[data-test="unread"]').count() === 1, 'unread messages are counted');
    await item.click();
    await page.getByRole('button', { name: 'Take over' }).click();
    await visitor.waitForSelector('.event:has-text("joined the conversation")');
    const reply = page.getByLabel('Reply to the end user');
    await page.waitForFunction(() => !document.querySelector('textarea[name="reply"]').disabled);
    await reply.fill('Hello, this is the team. We do ship to Canada.');
    await page.getByRole('button', { name: 'Send' }).click();
    await visitor.locator('.msg.staff').filter({ hasText: 'We do ship to Canada' }).waitFor();
    // The end user writes back: it arrives live, without reloading.
    const input = visitor.getByLabel('Your message');
    await input.fill('Great, thanks!');
    await input.press('Enter');
    await page.locator('[data-role="user"]').filter({ hasText: 'Great, thanks!' }).waitFor();
    // The list follows live too: the newest message and the new state.
    await page.locator('[data-conversation]').filter({ hasText: 'Great, thanks!' }).filter({ hasText: 'with Creator' }).waitFor();
    await screenshots(page, 'inbox');
    await page.getByRole('button', { name: 'Hand back to the coach' }).click();
    await visitor.waitForSelector('.event:has-text("handed the conversation back")');
    await page.getByRole('link', { name: 'All conversations of this end user' }).click();
    await page.getByRole('heading', { name: 'Conversations of one end user' }).waitFor();
  });

  await step('a knowledge gap becomes an answer the coach then uses', async () => {
    await page.getByRole('link', { name: 'Knowledge gaps' }).click();
    const gap = page.locator('[data-gap]').filter({ hasText: 'ship to Canada' });
    await gap.waitFor();
    await screenshots(page, 'gaps');
    await gap.getByRole('button', { name: 'Write an answer' }).click();
    await gap.getByLabel('Your answer').fill('Yes. We ship to Canada; parcels arrive within 5 business days.');
    await gap.getByRole('button', { name: 'Save answer' }).click();
    // The answered group leaves the list. (Other questions may be gaps too: the 135M test
    // model sometimes says it does not know even when a passage matches.)
    await gap.waitFor({ state: 'detached' });
    await page.getByRole('link', { name: 'Knowledge', exact: true }).click();
    await page.locator('tr[data-document^="Answer: Do you ship to Canada"] [data-status="ready"]').waitFor({ timeout: 60_000 });
    await page.getByRole('link', { name: 'Test chat' }).click();
    await page.getByLabel('Question for the coach').fill('Do you ship to Canada?');
    await page.getByRole('button', { name: 'Ask' }).click();
    const answer = page.locator('[data-role="answer"]');
    await answer.waitFor({ timeout: ANSWER_MS });
    await answer.locator('summary').filter({ hasText: 'Passages retrieved' }).click();
    const passages = await answer.locator('[data-test="passage"]').allInnerTexts();
    check(passages.some((p) => p.includes('Answer: Do you ship to Canada')), `the coach read the new answer: ${passages}`);
  });

  await step('analytics show the conversations the test created', async () => {
    await page.getByRole('link', { name: 'Analytics' }).click();
    await page.locator('[data-stat="questions"]').waitFor();
    const questions = Number(await page.locator('[data-stat="questions"]').innerText());
    check(questions >= 3, `questions counted: ${questions}`);
    check(await page.locator('[data-stat="conversations"]').innerText() === '1', 'one end-user conversation');
    check(await page.locator('svg[role="img"]').count() === 3, 'three charts with labels');
    check(await page.getByRole('cell', { name: 'Do you ship to Canada?' }).count() === 1, 'top questions listed');
    const download = page.waitForEvent('download');
    await page.getByRole('button', { name: 'Export CSV' }).click();
    check((await download).suggestedFilename().endsWith('.csv'), 'CSV export');
    await screenshots(page, 'analytics');
  });

  let invitation;
  await step('team: invite an analyst; API keys are created and revoked', async () => {
    await page.getByRole('link', { name: 'Team and keys' }).click();
    await page.getByLabel('Email').fill('lee@example.com');
    await page.getByLabel('Role', { exact: true }).first().selectOption('analyst');
    await page.getByRole('button', { name: 'Invite' }).click();
    invitation = await page.locator('[data-test="invitation-link"]').innerText();
    await page.getByLabel('Key name').fill('Website integration');
    await page.getByRole('button', { name: 'Create key' }).click();
    const key = await page.locator('[data-test="new-key"]').innerText();
    check(key.length > 20, 'the key is shown once');
    const embedded = await fetch(`${base}/v1/embeddings`, {
      method: 'POST', headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: 'companero-embed', input: 'How do refunds work?' }),
    });
    check(embedded.status === 200, `the key works on the OpenAI-compatible API (${embedded.status})`);
    const row = page.locator('tr[data-key="Website integration"]');
    await row.getByRole('button', { name: 'Revoke' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Revoke' }).click();
    await row.filter({ hasText: 'revoked' }).waitFor();
    const response = await fetch(`${base}/api/v1/documents`, { headers: { Authorization: `Bearer ${key}` } });
    check(response.status === 401, `a revoked key no longer works (${response.status})`);
    await page.getByLabel('Filter by action').fill('api_key');
    await page.getByRole('button', { name: 'Filter' }).click();
    await page.locator('code', { hasText: 'api_key.revoked' }).first().waitFor();
    await screenshots(page, 'team');
    await page.getByRole('link', { name: 'Analytics' }).click();
    const usage = page.locator('[data-section="api-usage"] tbody tr');
    await usage.first().waitFor();
    check((await usage.first().innerText()).includes('embeddings'), `the key's call is in API usage: ${await usage.first().innerText()}`);
    await page.getByRole('link', { name: 'This server' }).click();
    await page.getByRole('heading', { name: /^Creators/ }).waitFor();
    await page.locator('tr[data-model]').first().waitFor();
    check(await page.getByLabel('Who may sign up').count() === 1, 'the sign-up policy can be changed here');
    await screenshots(page, 'server');
  });

  await step('the invited analyst joins with a restricted role', async () => {
    const { page: lee } = await open();
    await lee.goto(onBase(invitation, base));
    await lee.getByLabel('Your name').fill('Lee Analyst');
    await lee.getByLabel('Email').fill('lee@example.com');
    await lee.getByLabel('Password').fill('quiet harbour lamps at dawn');
    await lee.getByRole('button', { name: 'Create account' }).click();
    await lee.getByRole('heading', { name: /^Hello/ }).waitFor();
    check(await lee.getByRole('link', { name: 'Team and keys' }).count() === 0, 'no team screen for analysts');
    await lee.getByRole('navigation').getByRole('link', { name: 'Coach settings' }).click();
    await lee.getByRole('button', { name: 'Save settings' }).click();
    await lee.locator('.alert.error').waitFor();
    check((await lee.locator('.alert.error').innerText()).length > 0, 'the refusal is explained');
  });

  check(problems.length === 0, `no console errors: ${problems.join('; ')}`);
} finally {
  await browser.close();
}
