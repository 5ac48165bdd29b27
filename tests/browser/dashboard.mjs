// The creator dashboard in headless Chromium, on a fresh server (tests/browser.rs starts it
// with the real test models): first-run set-up, onboarding to a working widget snippet,
// uploads to ready, a settings change in the live preview, the test chat; screenshots of each
// main screen at desktop and phone width.
//
// Environment: COMPANERO_URL, COMPANERO_SCREENSHOTS, CHROMIUM (default /usr/bin/chromium).
import { check, launch, screenshots as shoot, step, watch } from './harness.mjs';

const base = process.env.COMPANERO_URL.replace(/\/$/, '');
const ANSWER_MS = 120_000;
const REFUNDS = `# Refund policy

Refunds are paid within 14 days of the request, to the card used for the purchase. To ask for a
refund, write to the support team from the email address of your account.
`;
const SLEEP = `# Sleep

Keep the bedroom cool, around 18 degrees, and dark. Stop using screens one hour before bed.
`;

const browser = await launch();
const problems = [];
const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
const page = await context.newPage();
watch(page, problems);

const screenshots = (name) => shoot(page, name);

try {
  await step('first run: the first person sets the server up, with clear validation', async () => {
    await page.goto(`${base}/app`);
    await page.getByRole('heading', { name: 'Set up your Compañero' }).waitFor();
    await page.getByRole('button', { name: 'Set up Compañero' }).click();
    await page.getByText('Tell us your name.').waitFor();
    check(await page.getByLabel('Your name').getAttribute('aria-invalid') === 'true', 'the empty field is marked invalid');
    await page.getByLabel('Your name').fill('Ana Coach');
    await page.getByLabel('Email').fill('ana@example.com');
    await page.getByLabel('Password').fill('password12');
    await page.getByRole('button', { name: 'Set up Compañero' }).click();
    await page.locator('.error-text:not([hidden])').filter({ hasText: /password/i }).waitFor();
    await screenshots('sign-up');
    await page.getByLabel('Password').fill('violet tractor sings at noon');
    await page.getByRole('button', { name: 'Set up Compañero' }).click();
    await page.getByRole('heading', { name: 'Get started' }).waitFor();
  });

  await step('onboarding: coach, two documents, a test question, the widget snippet', async () => {
    await page.getByLabel('Greeting').fill('Hi! I answer questions about refunds and sleep.');
    await page.getByRole('button', { name: 'Save and continue' }).click();
    await page.getByRole('heading', { name: 'Give it your material' }).waitFor();
    await page.setInputFiles('#file-picker', [
      { name: 'refunds.md', mimeType: 'text/markdown', buffer: Buffer.from(REFUNDS) },
      { name: 'sleep.md', mimeType: 'text/markdown', buffer: Buffer.from(SLEEP) },
    ]);
    for (const name of ['refunds.md', 'sleep.md']) {
      await page.locator(`li[data-file="${name}"] [data-status="ready"]`).waitFor({ timeout: 60_000 });
    }
    await screenshots('onboarding-upload');
    await page.getByRole('button', { name: 'Continue' }).click();
    await page.getByLabel('Question for the coach').fill('How many days does it take to get a refund?');
    await page.getByRole('button', { name: 'Ask' }).click();
    await page.locator('[data-role="answer"]').waitFor({ timeout: ANSWER_MS });
    check(await page.locator('[data-test="confidence"]').count() === 1, 'the answer shows its confidence');
    await page.getByRole('button', { name: 'Continue' }).click();
    const snippet = await page.locator('[data-test="snippet"]').innerText();
    check(snippet.includes(`${base}/widget.js`) && snippet.includes('data-coach='), `a widget snippet: ${snippet}`);
    await page.getByRole('button', { name: 'Copy snippet' }).click();
    await page.getByRole('button', { name: 'Copied' }).waitFor();
    check((await page.evaluate(() => navigator.clipboard.readText())) === snippet, 'the snippet is on the clipboard');
    const link = await page.locator('[data-test="chat-link"]').getAttribute('href');
    const chat = await context.request.get(link);
    check(chat.status() === 200, 'the chat page link works');
    await screenshots('onboarding-share');
  });

  await step('knowledge: both documents ready, search shows the passages', async () => {
    await page.getByRole('link', { name: 'Knowledge', exact: true }).click();
    await page.locator('tr[data-document="refunds.md"] [data-status="ready"]').waitFor();
    await page.locator('tr[data-document="sleep.md"] [data-status="ready"]').waitFor();
    await page.getByLabel('Search the knowledge base').fill('how cool should the bedroom be');
    await page.getByRole('button', { name: 'Search', exact: true }).click();
    await page.locator('.passage').filter({ hasText: '18 degrees' }).first().waitFor();
    await screenshots('knowledge');
    await page.locator('tr[data-document="sleep.md"]').getByRole('button', { name: 'Delete' }).click();
    await page.getByRole('button', { name: 'Cancel' }).click();
    check(await page.locator('tr[data-document="sleep.md"]').count() === 1, 'cancel keeps the document');
  });

  await step('settings: a colour change shows in the live preview, then saves', async () => {
    await page.getByRole('link', { name: 'Coach settings' }).click();
    const launcher = page.locator('#widget-preview .launcher');
    await launcher.waitFor();
    await page.getByLabel('Main colour').fill('#b45309');
    await page.getByLabel('Opening message').fill('Questions about your refund?');
    await page.waitForFunction(() => {
      const node = document.querySelector('#widget-preview companero-chat').shadowRoot.querySelector('.launcher');
      return getComputedStyle(node).backgroundColor === 'rgb(180, 83, 9)';
    });
    await page.locator('#widget-preview .teaser').filter({ hasText: 'Questions about your refund?' }).waitFor();
    await page.getByLabel('Websites allowed to show the widget').fill('https://www.example.com');
    await page.getByRole('button', { name: 'Save settings' }).click();
    await page.getByText('Saved. The chat page and the widget use the new settings now.').waitFor();
    await screenshots('settings');
    await page.getByLabel('Websites allowed to show the widget').fill('not a website');
    await page.getByRole('button', { name: 'Save settings' }).click();
    await page.locator('.alert.error').waitFor();
  });

  await step('test chat: answers show citations or why not, confidence and passages', async () => {
    await page.getByRole('link', { name: 'Test chat' }).click();
    await page.getByLabel('Question for the coach').fill('How many days does it take to get a refund?');
    await page.getByRole('button', { name: 'Ask' }).click();
    const answer = page.locator('[data-role="answer"]');
    await answer.waitFor({ timeout: ANSWER_MS });
    check(await answer.locator('[data-test="confidence"]').count() === 1, 'confidence shown');
    await answer.locator('summary').click();
    const passages = await answer.locator('[data-test="passage"]').allInnerTexts();
    check(passages.some((p) => p.includes('Refund policy')), `retrieved passages shown: ${passages}`);
    await screenshots('test-chat');
  });

  await step('sign out, and back in', async () => {
    await page.getByRole('button', { name: 'Sign out', exact: true }).click();
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    await page.getByLabel('Email').fill('ana@example.com');
    await page.getByLabel('Password').fill('wrong password here');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('.error-text:not([hidden]), .alert.error').first().waitFor();
    await page.getByLabel('Password').fill('violet tractor sings at noon');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: /^Hello/ }).waitFor();
    await screenshots('overview');
  });

  check(problems.length === 0, `no console errors: ${problems.join('; ')}`);
} finally {
  await browser.close();
}
