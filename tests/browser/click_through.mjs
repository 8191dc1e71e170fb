// Headless Chromium: open a URL that shows the preview warning page, click
// "Continue to the preview", and report where the browser ends up. Driven by
// tests/integration/test_browser_api_mode.py (issue 10 item 6: the accept
// step must reach a preview whose next hop redirects to another origin).
//
//   node click_through.mjs '<json config>'
//
// Config: {url, expectHost, userAgent?}. Prints one line "RESULT <json>":
// the warning page's status, the final URL and #app text, every navigation
// response of the click, console messages (a CSP form-action violation shows
// there) and errors. Checks are made by the test, not here.
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.argv[2]);
const out = { errors: [], console: [], navs: [] };
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-quic',
         '--no-first-run', '--disable-component-update', '--disable-sync'],
});
try {
  const ctx = await browser.newContext(cfg.userAgent ? { userAgent: cfg.userAgent } : {});
  const page = await ctx.newPage();
  page.on('console', m => out.console.push({ type: m.type(), text: m.text() }));
  page.on('response', r => { if (r.request().isNavigationRequest()) out.navs.push(
    { url: r.url(), status: r.status(), method: r.request().method(),
      location: r.headers()['location'] || null }); });
  const resp = await page.goto(cfg.url, { waitUntil: 'load' });
  out.warningStatus = resp ? resp.status() : null;
  out.warningButtons = await page.getByText('Continue to the preview').count();
  await page.getByText('Continue to the preview').first().click();
  await page.waitForURL(u => new URL(String(u)).host === cfg.expectHost, { timeout: 10000 })
    .catch(e => out.errors.push('did not arrive: ' + String(e).split('\n')[0]));
  await page.waitForLoadState('load');
  out.finalUrl = page.url();
  out.appName = await page.locator('#app').textContent({ timeout: 1000 }).catch(() => null);
  out.cookies = (await ctx.cookies()).map(c => c.name);
  await ctx.close();
} catch (e) {
  out.errors.push(String(e && e.stack || e));
} finally {
  await browser.close().catch(() => {});
  process.stdout.write(`RESULT ${JSON.stringify(out)}\n`);
  process.exit(0);
}
