// The creator dashboard in headless Chromium, on a fresh server (tests/browser.rs starts it
// with the real test models): first-run set-up with the set-up token, onboarding to a working
// widget snippet, uploads to ready, a settings change in the live preview, the test chat, the
// team (an invitation revoked, a reset link for a member), two tabs sharing one session;
// screenshots of each main screen at desktop and phone width.
//
// Environment: COMPANERO_URL, SETUP_TOKEN (the server's first-run set-up token),
// COMPANERO_SCREENSHOTS, CHROMIUM (default /usr/bin/chromium).
import { accessibilityProblems, check, launch, onBase, screenshots as shoot, step, until, watch } from './harness.mjs';

const base = process.env.COMPANERO_URL.replace(/\/$/, '');
const setupToken = process.env.SETUP_TOKEN;
check(setupToken, 'SETUP_TOKEN is set (tests/browser.rs passes the server\'s set-up token)');
const SESSION = 'companero:session';
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
/** No serious or critical axe-core violation on the screen `name` as it is now. */
async function accessible(page, name) {
  const found = await accessibilityProblems(page);
  check(found.length === 0, `accessibility of ${name}: ${found.join('; ')}`);
}
const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
const page = await context.newPage();
watch(page, problems);

const screenshots = (name) => shoot(page, name);

try {
  await step('first run: the first person sets the server up, with clear validation', async () => {
    // A link that carries the token fills it in, before or after the '#'.
    await page.goto(`${base}/app#/?setup_token=setup_from_the_hash`);
    await page.getByRole('heading', { name: 'Set up your Compañero' }).waitFor();
    check(await page.getByLabel('Set-up token').inputValue() === 'setup_from_the_hash', 'the token in the link is filled in');
    await page.goto(`${base}/app?setup_token=setup_from_the_query`);
    await page.getByRole('heading', { name: 'Set up your Compañero' }).waitFor();
    check(await page.getByLabel('Set-up token').inputValue() === 'setup_from_the_query', 'the token in the query is filled in');
    await page.goto(`${base}/app`);
    await page.getByRole('heading', { name: 'Set up your Compañero' }).waitFor();
    const token = page.getByLabel('Set-up token');
    check(await token.inputValue() === '', 'no token without one in the link');
    await page.getByRole('button', { name: 'Set up Compañero' }).click();
    await page.getByText('Tell us your name.').waitFor();
    await page.getByText('Enter the set-up token.').waitFor();
    check(await page.getByLabel('Your name').getAttribute('aria-invalid') === 'true', 'the empty field is marked invalid');
    await page.getByLabel('Your name').fill('Ana Coach');
    await page.getByLabel('Email').fill('ana@example.com');
    await page.getByLabel('Password').fill('password12');
    await token.fill('setup_not_the_right_one');
    await page.getByRole('button', { name: 'Set up Compañero' }).click();
    await page.locator('.error-text:not([hidden])').filter({ hasText: /password/i }).waitFor();
    await screenshots('sign-up');
    await page.getByLabel('Password').fill('violet tractor sings at noon');
    await page.getByRole('button', { name: 'Set up Compañero' }).click();
    // A wrong token is refused, and said so on its field.
    await page.waitForFunction(() => document.querySelector('input[name="setup_token"]').getAttribute('aria-invalid') === 'true');
    const tokenError = await page.locator('input[name="setup_token"] ~ .error-text').innerText();
    check(/set-up token/i.test(tokenError), `the refusal is on the token's field: ${tokenError}`);
    await token.fill(setupToken);
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
    const strictness = page.getByLabel('How strictly to keep to your documents');
    check(await strictness.inputValue() === 'strict', 'a new coach keeps strictly to its documents');
    await strictness.selectOption('balanced');
    await page.getByRole('button', { name: 'Save settings' }).click();
    await page.getByText('Saved. The chat page and the widget use the new settings now.').waitFor();
    await page.reload();
    await strictness.waitFor();
    check(await strictness.inputValue() === 'balanced', 'the strictness was saved');
    await strictness.selectOption('strict');
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
    // Each sentence the model wrote shows how it was checked, with the facts it states.
    const checks = answer.locator('[data-test="checks"]');
    check(await checks.count() === 1, 'the sentence checks are shown');
    const summary = await checks.locator('summary').innerText();
    check(summary.includes('strict'), `the checks say the coach is strict: ${summary}`);
    const verdicts = await checks.locator('[data-test="check"]').evaluateAll((nodes) => nodes.map((n) => n.dataset.verdict));
    check(verdicts.length > 0 && verdicts.every(Boolean), `every sentence has a verdict: ${verdicts}`);
    await answer.locator('summary').filter({ hasText: 'Passages retrieved' }).click();
    const passages = await answer.locator('[data-test="passage"]').allInnerTexts();
    check(passages.some((p) => p.includes('Refund policy')), `retrieved passages shown: ${passages}`);
    const searched = await answer.locator('[data-test="searched-for"]').innerText();
    check(searched.includes('How many days does it take to get a refund?'), `what was searched is shown: ${searched}`);
    await screenshots('test-chat');
  });

  await step('channels: the web is on, Telegram and WhatsApp wait for their credentials', async () => {
    await page.getByRole('link', { name: 'Channels' }).click();
    await page.locator('[data-channel="telegram"]').getByLabel('Bot token').waitFor();
    check(await page.locator('[data-channel="web"] .badge').innerText() === 'On', 'the web channel is on');
    const whatsapp = page.locator('[data-channel="whatsapp"]');
    await whatsapp.getByLabel('Phone number id').fill('+34 600 000 111');
    await whatsapp.getByLabel('Access token').fill('EAAG-not-checked');
    await whatsapp.getByLabel('App secret').fill('secret');
    await whatsapp.getByRole('button', { name: 'Connect' }).click();
    const error = await whatsapp.locator('.alert.error').innerText();
    check(error.includes('not the phone number'), `a phone number instead of its id is explained: ${error}`);
    await screenshots('channels');
    await accessible(page, 'channels');
  });

  await step('programs: three steps with a branch built by dragging, published, and tried in the real chat on a test clock', async () => {
    await page.getByRole('link', { name: 'Programs' }).click();
    await page.getByRole('link', { name: 'New program' }).click();
    await page.getByLabel('Name', { exact: true }).fill('Sleep better');
    await page.getByRole('button', { name: 'Add a goal' }).click();
    const goal = page.locator('[data-goal-key="goal1"]');
    await goal.getByLabel('Title').fill('Hours slept');
    await goal.getByLabel('Metric').fill('sleep');
    await goal.getByLabel('Unit').fill('hours');
    await goal.getByLabel('Target').fill('8');
    const stepCard = (key) => page.locator(`[data-step="${key}"]`);
    const instruction = 'Instruction to the coach (or the text, without a model)';
    await stepCard('step1').getByLabel(instruction).fill('Welcome them and ask whether they want a nightly sleep check-in.');
    await page.getByRole('button', { name: 'Add a step' }).click();
    await page.locator('[data-step]').nth(1).getByLabel('Key').fill('step1');
    const warning = await page.locator('.alert.warn').innerText();
    check(warning.includes('used twice'), `a duplicate key is flagged as it is typed: ${warning}`);
    await page.locator('[data-step]').nth(1).getByLabel('Key').fill('checkin');
    await stepCard('checkin').getByLabel('Kind').selectOption('check_in');
    await stepCard('checkin').getByLabel('Day').fill('1');
    await stepCard('checkin').getByLabel('Text').fill('Ask how many hours they slept last night.');
    await page.getByRole('button', { name: 'Add a step' }).click();
    await page.locator('[data-step]').nth(2).getByLabel('Key').fill('wind-down');
    await stepCard('wind-down').getByLabel('Day').fill('0');
    await stepCard('wind-down').getByLabel('At').fill('10:00');
    await stepCard('wind-down').getByLabel(instruction).fill('Suggest a wind-down routine.');
    // The pointer reorders: the wind-down step is dragged by its handle above the check-in...
    await page.getByRole('heading', { name: 'Steps' }).click();
    await stepCard('checkin').evaluate((card) => card.scrollIntoView({ block: 'start' }));
    const handle = await stepCard('wind-down').getByRole('button', { name: 'Drag step 3' }).boundingBox();
    const target = await stepCard('checkin').boundingBox();
    await page.mouse.move(handle.x + handle.width / 2, handle.y + handle.height / 2);
    await page.mouse.down();
    await page.mouse.move(target.x + 40, target.y + 10, { steps: 8 });
    await page.mouse.up();
    const order = () => page.locator('[data-step]').evaluateAll((nodes) => nodes.map((n) => n.dataset.step).join(','));
    check(await order() === 'step1,wind-down,checkin', `dragged above the check-in: ${await order()}`);
    // ...and the keyboard moves it up and back down.
    await stepCard('wind-down').getByRole('button', { name: 'Move step 2 up' }).focus();
    await page.keyboard.press('Enter');
    check(await order() === 'wind-down,step1,checkin', `moved up with the keyboard: ${await order()}`);
    await stepCard('wind-down').getByRole('button', { name: 'Move step 1 down' }).focus();
    await page.keyboard.press('Enter');
    check(await order() === 'step1,wind-down,checkin', `moved down with the keyboard: ${await order()}`);
    // The welcome offers a choice whose answer leads to the check-in: a branch, drawn joined to it.
    await stepCard('step1').getByRole('button', { name: 'Add a choice' }).click();
    await stepCard('step1').getByLabel('Choice 1 label').fill('Yes please');
    await stepCard('step1').getByLabel('Choice 1 leads to').selectOption('checkin');
    await stepCard('step1').locator('.branch[data-branch="checkin"]').filter({ hasText: 'Yes please' }).waitFor();
    check((await stepCard('checkin').innerText()).includes('branch: sent when chosen'), 'the check-in is marked as a branch');
    await page.getByRole('button', { name: 'Save draft' }).click();
    await page.locator('[data-status]').filter({ hasText: 'draft · v1' }).waitFor();
    await page.getByRole('button', { name: 'Save and publish' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Publish' }).click();
    await page.locator('[data-status]').filter({ hasText: 'published' }).waitFor();
    await screenshots('program-builder');
    await accessible(page, 'the program builder');

    // Try it: the real chat of a test person, their clock moved by the buttons.
    await page.getByRole('button', { name: 'Try it as an end user' }).click();
    const chat = page.locator('#program-try-widget');
    const received = () => chat.locator('.msg.assistant[data-seq]:not([data-seq=""])').count();
    const next = page.getByRole('button', { name: /^Next step/ });
    /** Moves the clock to the next planned message and waits until one more has arrived. */
    async function nextStep() {
      const before = await received();
      await page.waitForFunction(() => {
        const button = [...document.querySelectorAll('button')].find((b) => b.textContent.startsWith('Next step'));
        return button && !button.disabled;
      }, null, { timeout: 30000 });
      await next.click();
      await until('the step to arrive in the chat', async () => (await received()) > before, ANSWER_MS).catch(async (error) => {
        console.log(await next.innerText(), await page.locator('[data-clock]').innerText());
        console.log(await page.evaluate(() => document.querySelector('#program-try-widget companero-chat')?.shadowRoot.innerHTML.slice(-3000)));
        throw error;
      });
    }
    await nextStep();
    await chat.locator('.msg.assistant').last().getByRole('button', { name: 'Yes please' }).click();
    // The chosen branch is planned at once: the next step is the check-in card.
    const value = chat.getByLabel('Your number');
    for (let i = 0; i < 3 && !(await value.isVisible()); i += 1) await nextStep();
    await value.fill('7');
    await chat.locator('form.prompt.value').getByRole('button', { name: 'Send' }).click();
    await screenshots('program-try-it');
  });

  await step('people: the check-in answered in the preview is on the person\'s chart', async () => {
    await page.getByRole('link', { name: 'People' }).click();
    await page.getByRole('heading', { name: 'People', level: 1 }).waitFor();
    await page.getByRole('link', { name: 'Test person' }).first().click();
    const slept = page.locator('[data-goal]').filter({ hasText: 'Hours slept' });
    await until('the check-in on the chart', async () => {
      if (await slept.locator('svg[data-chart="goal"][data-points="1"]').count()) return true;
      await page.reload();
      await page.getByRole('heading', { name: 'Test person', level: 1 }).waitFor();
      return false;
    }, 60000);
    const caption = await slept.locator('figcaption').innerText();
    check(caption.includes('7') && caption.includes('target 8'), `the chart's text says what it shows: ${caption}`);
  });

  await step('nudge rules: a schedule picked as days of the week, a bad time explained', async () => {
    await page.getByRole('link', { name: 'Nudge rules' }).click();
    await page.getByRole('button', { name: 'New rule' }).click();
    const form = page.getByRole('form', { name: 'New rule' });
    await form.getByLabel('Name').fill('Weekly review');
    await form.getByLabel('When').selectOption('schedule');
    await form.getByRole('group', { name: 'On these days' }).getByLabel('Mon').check();
    await form.getByRole('group', { name: 'On these days' }).getByLabel('Thu').check();
    check(await form.locator('[data-rrule]').innerText() === 'FREQ=WEEKLY;BYDAY=MO,TH', 'the picker writes the RRULE');
    await form.getByLabel('Next five times for someone in').fill('Europe/Madrid');
    const times = form.getByRole('list', { name: 'Next five times' }).locator('li');
    await page.waitForFunction(() => document.querySelectorAll('[data-occurrences] li').length === 5
      && [...document.querySelectorAll('[data-occurrences] li')].every((li) => /Monday|Thursday/.test(li.textContent)));
    check(await times.count() === 5, 'the next five occurrences are listed');
    await form.getByLabel('At (their local time)').fill('25:00');
    await form.getByLabel('What the coach is to write').fill('Ask how the week went and what they will try next.');
    await form.getByRole('button', { name: 'Save rule' }).click();
    const error = await form.locator('.alert.error').innerText();
    check(/25:00|time/i.test(error), `a bad time is explained: ${error}`);
    await form.getByLabel('At (their local time)').fill('18:30');
    await form.getByRole('button', { name: 'Save rule' }).click();
    const card = page.locator('[data-rule="Weekly review"]');
    await card.waitFor();
    check((await card.innerText()).includes('FREQ=WEEKLY;BYDAY=MO,TH at 18:30'), 'the rule shows its schedule');
    await screenshots('nudge-rules');
    await accessible(page, 'nudge rules');
  });

  await step('an inactivity rule fires in the preview, in the test person\'s chat', async () => {
    await page.getByRole('button', { name: 'New rule' }).click();
    const form = page.getByRole('form', { name: 'New rule' });
    await form.getByLabel('Name').fill('Quiet check');
    await form.getByLabel('When').selectOption('inactivity');
    await form.getByLabel('Days without a message').fill('2');
    await form.getByLabel('What the coach is to write').fill('Ask kindly how their evenings are going.');
    await form.getByRole('button', { name: 'Save rule' }).click();
    await page.locator('[data-rule="Quiet check"]').waitFor();
    await page.getByRole('link', { name: 'Programs' }).click();
    await page.getByRole('link', { name: 'Sleep better' }).click();
    await page.getByRole('button', { name: 'Try it as an end user' }).click();
    const clock = page.locator('[data-clock]');
    await until('the test clock', async () => (await clock.innerText()).includes('Their clock'));
    // Three quiet days on the test person's clock, a day at a time.
    for (let day = 0; day < 3; day += 1) {
      const before = await clock.innerText();
      await page.getByRole('button', { name: '+1 day' }).click();
      await until('the clock to move', async () => (await clock.innerText()) !== before, ANSWER_MS);
    }
    const fired = await until('the rule\'s nudge', () => page.evaluate(async () => {
      const { access_token: token } = JSON.parse(localStorage.getItem('companero:session'));
      const get = (route) => fetch(route, { headers: { Authorization: `Bearer ${token}` } }).then((r) => r.json());
      const rule = (await get('/api/v1/nudge-rules')).nudge_rules.find((r) => r.name === 'Quiet check');
      return (await get('/api/v1/nudges?limit=100')).nudges.find((n) => n.rule_id === rule.id && n.message_id) || null;
    }), ANSWER_MS);
    await page.locator(`#program-try-widget .msg.assistant[data-key="${fired.message_id}"]`).waitFor({ timeout: 30000 });
    await screenshots('program-try-rule');
  });

  await step('people and outcomes: the directory and each program\'s results', async () => {
    await page.getByRole('link', { name: 'People' }).click();
    await page.getByRole('heading', { name: 'People', level: 1 }).waitFor();
    await page.getByRole('form', { name: 'Filter people' }).waitFor();
    await page.getByLabel('Search').fill('test pers');
    await page.getByRole('button', { name: 'Filter' }).click();
    await page.locator('[data-person]').first().waitFor();
    check((await page.locator('[data-person]').allInnerTexts()).every((row) => row.includes('Test person')), 'the search finds the test person');
    await accessible(page, 'people');
    // The test person from the preview: a goal added, a check-in recorded, the enrolment paused.
    await page.getByRole('link', { name: 'Test person' }).first().click();
    await page.getByRole('heading', { name: 'Test person', level: 1 }).waitFor();
    const addGoal = page.getByRole('form', { name: 'Add a goal' });
    await addGoal.getByLabel('Goal title').fill('Lights out by 23:00');
    await addGoal.getByLabel('Metric').fill('nights');
    await addGoal.getByLabel('Target').fill('5');
    await addGoal.getByRole('button', { name: 'Add a goal' }).click();
    const goal = page.locator('[data-goal]').filter({ hasText: 'Lights out by 23:00' });
    await goal.getByLabel('Value for Lights out by 23:00').fill('2');
    await goal.getByRole('button', { name: 'Record a check-in' }).click();
    await page.locator('[data-goal]').filter({ hasText: '2 of 5' }).waitFor();
    await page.locator('[data-enrollment]').getByRole('button', { name: 'Pause' }).click();
    await page.locator('[data-enrollment]').filter({ hasText: 'paused' }).waitFor();
    await screenshots('person');
    await accessible(page, 'the person page');
    // A cohort of four real end users enrols from the chat page; the team records the hours
    // each slept (2, 4, 6, 8).
    await page.evaluate(async () => {
      const { access_token: token } = JSON.parse(localStorage.getItem('companero:session'));
      const call = async (route, { method = 'GET', body, as = token } = {}) => {
        const response = await fetch(route, { method, headers: { Authorization: `Bearer ${as}`, 'Content-Type': 'application/json' }, body: body && JSON.stringify(body) });
        if (!response.ok) throw new Error(`${method} ${route}: ${response.status} ${await response.text()}`);
        return response.json();
      };
      const { slug } = await call('/api/v1/coach');
      const program = (await call('/api/v1/programs')).programs.find((p) => p.name === 'Sleep better');
      for (let i = 0; i < 4; i += 1) {
        const visitor = await fetch(`/api/v1/public/coaches/${slug}/visitors?time_zone=Europe/Madrid`, { method: 'POST' }).then((r) => r.json());
        await call('/api/v1/public/me/enrollments', { method: 'POST', body: { program_id: program.id }, as: visitor.token });
      }
      const { end_users: cohort } = await call(`/api/v1/end-users?program_id=${program.id}`);
      const real = cohort.filter((u) => !u.test_clock_id);
      for (const [i, person] of real.entries()) {
        const profile = await call(`/api/v1/end-users/${person.id}`);
        const goal = profile.goals.find((g) => g.title === 'Hours slept');
        await call(`/api/v1/goals/${goal.id}/check-ins`, { method: 'POST', body: { value: 2 * (i + 1) } });
      }
    });
    await page.getByRole('link', { name: 'Outcomes' }).click();
    await page.getByRole('heading', { name: 'Outcomes', level: 1 }).waitFor();
    const sleep = page.locator('[data-outcomes]').filter({ hasText: 'Sleep better' });
    await sleep.waitFor();
    check(/Enrolled\s*4\b/.test(await sleep.innerText()), `four enrolled: ${await sleep.innerText()}`);
    const heat = await sleep.locator('figure:has(svg[data-chart="heat-map"]) figcaption').innerText();
    check(heat.includes('100%'), `the whole cohort checked in in week 0: ${heat}`);
    const spread = await sleep.locator('figure:has(svg[data-chart="bars"]) figcaption').last().innerText();
    check(spread.includes('1 at 20–40%') && spread.includes('1 at 80–100%'), `the goal progress is spread out: ${spread}`);
    await screenshots('outcomes');
    await accessible(page, 'outcomes');
  });

  const instance = await (await fetch(`${base}/api/v1/instance`)).json();
  let resetLink;
  await step('team: an invitation revoked, a reset link for a member', async () => {
    await page.getByRole('link', { name: 'Team and keys' }).click();
    const invite = async (email) => {
      await page.getByLabel('Email').fill(email);
      await page.getByRole('button', { name: 'Invite' }).click();
      const shown = page.locator('[data-test="invitation-link"]').filter({ hasText: /invitation=/ });
      await page.locator('.alert.ok').filter({ hasText: email }).waitFor();
      return shown.innerText();
    };
    const samLink = await invite('sam@example.com');
    if (!instance.email) {
      await page.locator('.alert.ok').filter({ hasText: 'not emailed' }).waitFor();
      check(await page.getByText('invitations are not mailed').count() === 1, 'the invite form says nothing is mailed');
    }
    // Sam accepts (by the API: the sign-up form is covered by operations.mjs).
    const invitation = new URLSearchParams(new URL(samLink).hash.split('?')[1]).get('invitation');
    const joined = await fetch(`${base}/api/v1/auth/register`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ full_name: 'Sam Coach', email: 'sam@example.com', password: 'copper kettle hums softly', invitation }),
    });
    check(joined.status === 201, `the invitee joins (${joined.status})`);

    const goneLink = await invite('gone@example.com');
    const row = page.locator('tr[data-invitation="gone@example.com"]');
    await row.getByRole('button', { name: 'Revoke' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Revoke' }).click();
    await row.waitFor({ state: 'detached' });
    const refused = await fetch(`${base}/api/v1/auth/register`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ full_name: 'Gone', email: 'gone@example.com', password: 'copper kettle hums softly',
        invitation: new URLSearchParams(new URL(goneLink).hash.split('?')[1]).get('invitation') }),
    });
    check(refused.status >= 400 && refused.status < 500, `a revoked invitation no longer works (${refused.status})`);

    await page.reload();
    const sam = page.locator('tr[data-member="sam@example.com"]');
    await sam.waitFor();
    check(await page.locator('tr[data-member="ana@example.com"]').getByRole('button', { name: 'Reset link' }).count() === 0,
      'no reset link for yourself');
    await sam.getByRole('button', { name: 'Reset link' }).click();
    const shown = page.locator('[data-test="reset-link"]');
    await shown.waitFor();
    resetLink = await shown.innerText();
    check(resetLink.includes('/reset-password?token='), `a reset link: ${resetLink}`);
    check(/once, for one hour/.test(await page.locator('.alert.ok').filter({ has: shown }).innerText()), 'it says it works once, for one hour');
    await screenshots('team');
  });

  await step('the member chooses a new password with the reset link', async () => {
    const reset = watch(await context.newPage(), problems);
    await reset.goto(onBase(resetLink, base));
    await reset.getByLabel('New password').fill('amber lantern drifts east');
    await reset.getByLabel('Type it again').fill('amber lantern drifts east');
    await reset.getByRole('button', { name: 'Save the new password' }).click();
    await reset.getByText('Your password is changed.').waitFor();
    await reset.close();
    const login = await fetch(`${base}/api/v1/auth/login`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ email: 'sam@example.com', password: 'amber lantern drifts east' }),
    });
    check(login.status === 200, `the new password works (${login.status})`);
  });

  await step('sign out, and back in', async () => {
    await page.getByRole('button', { name: 'Sign out', exact: true }).click();
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    await page.getByRole('link', { name: 'Forgot your password?' }).click();
    await page.getByRole('heading', { name: 'Reset your password' }).waitFor();
    if (!instance.email) {
      const words = await page.locator('[data-test="no-email"]').innerText();
      check(words.includes('Team and keys') && words.includes('companero admin reset-link'), `no e-mail: says who makes a link: ${words}`);
      check(await page.getByRole('button', { name: 'Send reset link' }).count() === 0, 'no pretending a mail is sent');
    }
    await page.getByRole('link', { name: 'Back to sign in' }).click();
    await page.getByLabel('Email').fill('ana@example.com');
    await page.getByLabel('Password').fill('wrong password here');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('.error-text:not([hidden]), .alert.error').first().waitFor();
    await page.getByLabel('Password').fill('violet tractor sings at noon');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: /^Hello/ }).waitFor();
    await screenshots('overview');
  });

  await step('two tabs share one session: both refresh and stay signed in; sign-out and sign-in reach both', async () => {
    const second = watch(await context.newPage(), problems);
    await second.goto(`${base}/app`);
    await second.getByRole('heading', { name: /^Hello/ }).waitFor();
    const tabs = [page, second];
    const stored = () => page.evaluate((key) => JSON.parse(localStorage.getItem(key)), SESSION);
    const refreshes = [];
    // Each refresh by the refresh token it renews: the two tabs' renewals of one session must
    // come to one call.
    const count = (request) => {
      if (request.method() === 'POST' && request.url().endsWith('/api/v1/auth/refresh')) refreshes.push(JSON.parse(request.postData() || '{}').refresh_token);
    };
    context.on('request', count);
    const stillIn = async (label) => {
      const tokens = await Promise.all(tabs.map((tab) => tab.evaluate(() => import('/app/api.js').then((api) => api.accessToken()))));
      check(tokens[0] === tokens[1] && tokens[0] === (await stored()).access_token, `${label}: both tabs use the stored tokens`);
      const me = await Promise.all(tabs.map((tab) => tab.evaluate(() => import('/app/api.js').then((api) => api.get('/api/v1/auth/me')).then((m) => m.email))));
      check(me.every((email) => email === 'ana@example.com'), `${label}: both tabs are signed in (${me})`);
    };

    // Both tabs ask for a refresh while the refresh lock is held (as if a third tab were
    // refreshing): once it is free, one tab refreshes and the other uses its tokens.
    const first = await stored();
    await page.evaluate(() => new Promise((held) => {
      navigator.locks.request('companero-refresh', () => new Promise((release) => { window.releaseRefreshLock = release; held(); }));
    }));
    for (const tab of tabs) await tab.evaluate(() => import('/app/api.js').then((api) => { window.renewal = api.refresh(); }));
    await page.evaluate(() => window.releaseRefreshLock());
    await Promise.all(tabs.map((tab) => tab.evaluate(() => window.renewal)));
    const renewed = await stored();
    check(renewed.refresh_token !== first.refresh_token, 'the refresh token was rotated');
    const renewals = refreshes.filter((token) => token === first.refresh_token).length;
    check(renewals === 1, `one refresh for both tabs (${renewals}; ${refreshes.length} refreshes in all)`);
    await stillIn('after refreshing together');

    // Both tabs open with an access token about to lapse: each refreshes before its first call.
    await page.evaluate((key) => {
      const session = JSON.parse(localStorage.getItem(key));
      localStorage.setItem(key, JSON.stringify({ ...session, expires_at: Date.now() }));
    }, SESSION);
    await Promise.all(tabs.map((tab) => tab.reload()));
    await Promise.all(tabs.map((tab) => tab.getByRole('heading', { name: /^Hello/ }).waitFor()));
    check((await stored()).refresh_token !== renewed.refresh_token, 'refreshed again');
    console.log(`    refreshes for two tabs, twice: ${refreshes.length}`);
    await stillIn('after reloading with a lapsing token');
    context.off('request', count);

    for (const tab of tabs) {
      await tab.getByRole('link', { name: 'Knowledge', exact: true }).click();
      await tab.getByRole('heading', { name: 'Knowledge', exact: true }).waitFor();
    }
    await page.getByRole('button', { name: 'Sign out', exact: true }).click();
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    await second.getByRole('heading', { name: 'Sign in' }).waitFor();
    check(await second.evaluate((key) => localStorage.getItem(key), SESSION) === null, 'no session is left');
    // Signing in again in one tab signs in the other too, back on the screen it was showing.
    await page.getByLabel('Email').fill('ana@example.com');
    await page.getByLabel('Password').fill('violet tractor sings at noon');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: /^Hello/ }).waitFor();
    await second.getByRole('heading', { name: 'Knowledge', exact: true }).waitFor();
    await second.close();
  });

  check(problems.length === 0, `no console errors: ${problems.join('; ')}`);
} finally {
  await browser.close();
}
