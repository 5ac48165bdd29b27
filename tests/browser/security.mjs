// Two-step sign-in and data protection in the dashboard, in headless Chromium (tests/browser.rs
// starts the server, a creator and one person who wrote to the coach): setting up an
// authenticator from "Your account" (codes computed here with a second RFC 6238
// implementation), signing in with a code and with a recovery code, a wrong code explained,
// requiring it of the team; the retention policy with its checks and a clean-up; a person's
// export and erasure; screenshots of each screen.
//
// Environment: COMPANERO_URL, COMPANERO_EMAIL and COMPANERO_PASSWORD (the creator, an admin),
// COMPANERO_PERSON (an end user's id), COMPANERO_SCREENSHOTS, CHROMIUM.
import { createHmac } from 'node:crypto';
import { accessibilityProblems, check, launch, screenshots as shoot, step, watch } from './harness.mjs';

const base = process.env.COMPANERO_URL.replace(/\/$/, '');
const email = process.env.COMPANERO_EMAIL;
const password = process.env.COMPANERO_PASSWORD;
const person = process.env.COMPANERO_PERSON;

/** RFC 4648 base32 → bytes. */
function base32(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  const out = [];
  for (const c of text.replace(/=+$/, '').toUpperCase()) {
    value = (value << 5) | alphabet.indexOf(c);
    bits += 5;
    if (bits >= 8) { out.push((value >>> (bits - 8)) & 255); bits -= 8; }
  }
  return Buffer.from(out);
}

/** The 6-digit TOTP (SHA-1, 30 s) of `secret`, `stepsAhead` steps from now. */
function totp(secret, stepsAhead = 0) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(Date.now() / 30_000) + stepsAhead));
  const mac = createHmac('sha1', base32(secret)).update(counter).digest();
  const offset = mac[19] & 15;
  const number = (((mac[offset] & 127) << 24) | (mac[offset + 1] << 16) | (mac[offset + 2] << 8) | mac[offset + 3]) % 1_000_000;
  return String(number).padStart(6, '0');
}

const browser = await launch();
const problems = [];
const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, acceptDownloads: true });
await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
const page = watch(await context.newPage(), problems);
const screenshots = (name) => shoot(page, name);
async function accessible(name) {
  const found = await accessibilityProblems(page);
  check(found.length === 0, `accessibility of ${name}: ${found.join('; ')}`);
}

async function passwordStep() {
  await page.goto(`${base}/app#/signin`);
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

async function signOut() {
  await page.getByRole('button', { name: 'Sign out', exact: true }).click();
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
}

try {
  let secret;
  let recoveryCodes;
  await step('your account: set up two-step sign-in with a QR code, get ten recovery codes', async () => {
    await passwordStep();
    await page.getByRole('heading', { name: /^Hello/ }).waitFor();
    await page.getByRole('link', { name: 'Your account' }).click();
    await page.getByRole('heading', { name: 'Two-step sign-in' }).waitFor();
    await page.getByRole('button', { name: 'Set up two-step sign-in' }).click();
    await page.getByRole('img', { name: /QR code/ }).waitFor();
    check(await page.getByRole('img', { name: /QR code/ }).evaluate((img) => img.complete && img.naturalWidth > 0), 'the QR code draws');
    secret = (await page.locator('[data-test="mfa-secret"]').innerText()).trim();
    await screenshots('mfa-setup');
    await accessible('two-step set-up');
    // A wrong code is explained at the field.
    await page.getByLabel('Code from the app').fill(totp(secret) === '123456' ? '654321' : '123456');
    await page.getByRole('button', { name: 'Turn on' }).click();
    await page.locator('.error-text:not([hidden])').filter({ hasText: 'not right' }).waitFor();
    await page.getByLabel('Code from the app').fill(totp(secret));
    await page.getByRole('button', { name: 'Turn on' }).click();
    const codes = page.locator('[data-test="recovery-codes"] .codes li');
    await codes.first().waitFor();
    recoveryCodes = await codes.allInnerTexts();
    check(recoveryCodes.length === 10, `ten recovery codes (${recoveryCodes.length})`);
    await screenshots('mfa-recovery-codes');
    await page.getByRole('button', { name: 'I saved my recovery codes' }).click();
    await page.locator('[data-test="mfa-on"]').filter({ hasText: '10 of 10' }).waitFor();
  });

  await step('sign-in asks for the code; a wrong one is explained, the right one signs in', async () => {
    await signOut();
    await passwordStep();
    await page.getByRole('heading', { name: 'Two-step sign-in' }).waitFor();
    await screenshots('mfa-sign-in');
    await accessible('second step of sign-in');
    const near = [-1, 0, 1].map((s) => totp(secret, s));
    await page.getByLabel('Code from your authenticator app').fill(near.includes('000000') ? '999999' : '000000');
    await page.getByRole('button', { name: 'Verify' }).click();
    await page.locator('.error-text:not([hidden])').filter({ hasText: 'not right' }).waitFor();
    // The set-up spent this step's code: the next step's is the one that works now.
    await page.getByLabel('Code from your authenticator app').fill(totp(secret, 1));
    await page.getByRole('button', { name: 'Verify' }).click();
    await page.getByRole('heading', { name: /^Hello/ }).waitFor();
  });

  await step('a recovery code signs in once when the phone is not at hand', async () => {
    await signOut();
    await passwordStep();
    await page.getByRole('button', { name: 'Use a recovery code instead' }).click();
    await page.getByLabel('Recovery code').fill(recoveryCodes[0]);
    await page.getByRole('button', { name: 'Verify' }).click();
    await page.getByRole('heading', { name: /^Hello/ }).waitFor();
    await page.getByRole('link', { name: 'Your account' }).click();
    await page.locator('[data-test="mfa-on"]').filter({ hasText: '9 of 10' }).waitFor();
    await screenshots('account');
  });

  await step('the admin requires two-step sign-in of the team', async () => {
    await page.getByRole('link', { name: 'Team and keys' }).click();
    const box = page.getByLabel('Require two-step sign-in for everyone in this team');
    await box.check();
    await page.locator('.alert.ok').filter({ hasText: 'signed out' }).waitFor();
    const tenant = await page.evaluate(() => import('/app/api.js').then((api) => api.get('/api/v1/tenant')));
    check(tenant.require_mfa === true, 'the team requires it');
    await page.getByRole('link', { name: 'Your account' }).click();
    await page.getByText('so it stays on').waitFor();
  });

  await step('data and privacy: retention checked, saved, and a clean-up run', async () => {
    await page.getByRole('link', { name: 'Data and privacy' }).click();
    await page.getByRole('heading', { name: 'How long data is kept' }).waitFor();
    await page.getByLabel('Delete conversations quiet for (days)').fill('90');
    await page.getByLabel('Keep the audit log for (days)').fill('10');
    await page.getByRole('button', { name: 'Save' }).click();
    await page.locator('.error-text:not([hidden])').filter({ hasText: 'at least 30 days' }).waitFor();
    await page.getByLabel('Keep the audit log for (days)').fill('400');
    await page.getByRole('button', { name: 'Save' }).click();
    await page.locator('.alert.ok').filter({ hasText: 'once a day' }).waitFor();
    await page.locator('[data-test="retention-state"]').filter({ hasText: /Next clean-up: \w/ }).waitFor();
    await page.getByRole('button', { name: 'Clean up now' }).click();
    await page.locator('[data-test="last-run"]').filter({ hasText: 'nothing was old enough' }).waitFor();
    const policy = await page.evaluate(() => import('/app/api.js').then((api) => api.get('/api/v1/retention')));
    check(policy.conversation_days === 90 && policy.audit_days === 400 && policy.end_user_days === null, `stored: ${JSON.stringify(policy)}`);
    await screenshots('privacy');
    await accessible('data and privacy');
  });

  await step('a person\'s data: exported as a ZIP, then erased after a confirmation', async () => {
    await page.goto(`${base}/app#/people?id=${encodeURIComponent(person)}`);
    await page.getByRole('heading', { name: 'Their data' }).waitFor();
    await page.getByRole('button', { name: 'Export their data' }).click();
    const link = page.locator('[data-test="export-link"]');
    await link.waitFor({ timeout: 60_000 });
    const [download] = await Promise.all([page.waitForEvent('download'), link.click()]);
    const bytes = await download.createReadStream().then((stream) => new Promise((resolve) => {
      const chunks = [];
      stream.on('data', (c) => chunks.push(c));
      stream.on('end', () => resolve(Buffer.concat(chunks)));
    }));
    check(bytes.subarray(0, 2).toString() === 'PK', 'the download is a ZIP');
    check(bytes.includes(Buffer.from('conversations.md')), 'with the conversations');
    await page.getByRole('button', { name: 'Erase this person' }).click();
    const dialog = page.getByRole('dialog');
    check((await dialog.innerText()).includes('cannot be undone'), 'the confirmation says what it means');
    await dialog.getByRole('button', { name: 'Erase' }).click();
    await page.getByRole('heading', { name: 'People' }).waitFor();
    const gone = await page.evaluate((id) => import('/app/api.js').then((api) => api.get(`/api/v1/end-users/${id}`).then(() => 200, (e) => e.status)), person);
    check(gone === 404, `the person is gone (${gone})`);
  });

  check(problems.length === 0, `no console errors: ${problems.join('; ')}`);
} finally {
  await browser.close();
}
