// Benchmark, not a test: how soon the program builder is usable with a 60-step program, in
// headless Chromium against a running server. Prints figures; asserts nothing about speed.
//
//   COMPANERO_URL=http://127.0.0.1:8080 COMPANERO_EMAIL=… COMPANERO_PASSWORD=… \
//     node tests/browser/bench-builder.mjs [runs]
//
// For each run (a fresh browser context, nothing cached): the time from navigation start until
// the 60 step cards are drawn and the page's main thread is free (a task queued then runs:
// time to interactive), then the time one keystroke in a step takes to be checked (every step
// is validated on each input).
import { launch } from './harness.mjs';

const base = process.env.COMPANERO_URL.replace(/\/$/, '');
const runs = Number(process.argv[2] || 5);
const STEPS = 60;

async function api(route, { method = 'GET', body, token } = {}) {
  const response = await fetch(base + route, {
    method,
    headers: { 'Content-Type': 'application/json', ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(`${method} ${route}: ${response.status} ${JSON.stringify(data)}`);
  return data;
}

const tokens = await api('/api/v1/auth/login', { method: 'POST', body: { email: process.env.COMPANERO_EMAIL, password: process.env.COMPANERO_PASSWORD } });
const steps = Array.from({ length: STEPS }, (_, i) => ({
  key: `day${i}`, day: i, at: i % 2 ? '19:00' : '08:30', kind: i % 10 === 9 ? 'check_in' : 'message',
  goal_key: i % 10 === 9 ? 'minutes' : null,
  text: `Day ${i}: suggest one small change to their evening routine and ask how the last one went.`,
  ...(i % 15 === 0 && i + 1 < STEPS ? { choices: [{ label: 'Tell me more', next: `day${i + 1}` }] } : {}),
}));
const program = await api('/api/v1/programs', { method: 'POST', token: tokens.access_token, body: {
  name: `Sixty days (${Date.now()})`, goals: [{ key: 'minutes', title: 'Minutes walked', metric: 'walking', unit: 'min', target: 30, direction: 'increase' }], steps,
} });

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const browser = await launch();
const ready = [];
const keystroke = [];
try {
  for (let run = 0; run < runs; run += 1) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    await context.addInitScript((session) => localStorage.setItem('companero:session', JSON.stringify(session)),
      { ...tokens, expires_at: Date.now() + tokens.expires_in * 1000, saved_at: Date.now() });
    const page = await context.newPage();
    await page.goto(`${base}/app/#/programs?id=${encodeURIComponent(program.id)}`);
    const at = await page.evaluate((count) => new Promise((resolve) => {
      const look = () => {
        if (document.querySelectorAll('[data-step]').length === count) setTimeout(() => resolve(performance.now()), 0);
        else requestAnimationFrame(look);
      };
      look();
    }), STEPS);
    ready.push(at);
    const took = await page.evaluate(() => {
      const key = document.querySelector('[data-step] input');
      const started = performance.now();
      key.value = `${key.value}x`;
      key.dispatchEvent(new Event('input', { bubbles: true }));
      return performance.now() - started;
    });
    keystroke.push(took);
    await context.close();
  }
} finally {
  await browser.close();
}
console.log(`builder with ${STEPS} steps, ${runs} runs (fresh context each)`);
console.log(`  time to interactive: median ${median(ready).toFixed(0)} ms (${ready.map((t) => t.toFixed(0)).join(', ')})`);
console.log(`  one keystroke checked: median ${median(keystroke).toFixed(1)} ms (${keystroke.map((t) => t.toFixed(1)).join(', ')})`);
