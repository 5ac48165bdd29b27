// What every browser scenario shares: Debian's Chromium under Playwright, checks, steps with
// timings, console watching and screenshots at desktop and phone width.
import path from 'node:path';
import { chromium } from 'playwright-core';

export function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

/** Headless Chromium with the flags this offline machine needs. */
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-quic'],
  });
}

/** Collects script errors and console errors of `page` into `problems`. The browser also logs
 * every 4xx response; scenarios provoke some on purpose, so those are not problems. */
export function watch(page, problems) {
  page.on('pageerror', (error) => problems.push(`script error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) problems.push(message.text());
  });
  return page;
}

/** axe-core's serious and critical accessibility violations on the page as it is now, one
 * line each (rule: the first offending element). Run through the DevTools protocol, so the
 * page's own script policy does not apply. */
export async function accessibilityProblems(page) {
  const source = await import('node:fs').then((fs) => fs.readFileSync(new URL('./node_modules/axe-core/axe.min.js', import.meta.url), 'utf8'));
  await page.evaluate(source);
  const violations = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }).then((r) => r.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id}: ${v.nodes[0] ? v.nodes[0].target.join(' ') : ''} (${v.nodes.length})`)));
  return violations;
}

export async function step(name, body) {
  const started = Date.now();
  await body();
  console.log(`ok  ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
}

/** Full-page screenshots at desktop and phone width; a phone must not scroll sideways. */
export async function screenshots(page, name) {
  const folder = process.env.COMPANERO_SCREENSHOTS;
  await page.screenshot({ path: path.join(folder, `dashboard-${name}-desktop.png`), fullPage: true });
  await page.setViewportSize({ width: 375, height: 740 });
  await page.waitForTimeout(150);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  check(!overflow, `${name}: no sideways scrolling on a phone`);
  await page.screenshot({ path: path.join(folder, `dashboard-${name}-phone.png`), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 860 });
}

/** `link` (made by the server from its public URL, which tests do not set) on the server under
 * test at `base`. */
export function onBase(link, base) {
  const url = new URL(link);
  return `${base}${url.pathname}${url.search}${url.hash}`;
}

/** Polls `probe` until it gives something truthy (returned), or fails after `ms`. */
export async function until(what, probe, ms = 30_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}
