// Headless Chromium through the preview proxy: signed URL -> warning page ->
// click -> sandbox page -> reload -> cross-origin fetches with credentials ->
// error pages. Driven by tests/integration/test_browser_chromium.py.
//
//   node flow.mjs '<json config>'
//
// Config: {signedUrl, unsignedUrl, otherUrl, errorUrl, artifacts, userAgent?}
// stdout protocol: "PAUSE <name>" lines, each answered by one line on stdin
// (the test changes server-side state in between), then one final line
// "RESULT <json>" with everything observed. Checks are made by the test, not
// here: this script only reports what the browser saw.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.argv[2]);
const out = { steps: {}, errors: [] };
const stdin = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function pause(name) {
  process.stdout.write(`PAUSE ${name}\n`);
  const { value, done } = await stdin.next();
  if (done) throw new Error(`stdin closed while paused at ${name}`);
  return value;
}

async function pageInfo(page, resp) {
  return {
    url: page.url(),
    status: resp ? resp.status() : null,
    headers: resp ? resp.headers() : null,
    title: await page.title(),
    text: (await page.locator('body').innerText().catch(() => '')).slice(0, 4000),
    appName: await page.locator('#app').textContent({ timeout: 500 }).catch(() => null),
    seen: await page.locator('#seen').textContent({ timeout: 500 }).catch(() => null),
    forms: await page.locator('form').count(),
    buttons: await page.locator('button').count(),
  };
}

// Runs in the other sandbox's page: cross-origin fetches to the target sandbox.
async function crossOriginFetches(page, target, unsignedTarget) {
  return page.evaluate(async ({ target, unsignedTarget }) => {
    async function attempt(name, url, init) {
      try {
        const r = await fetch(url, init);
        const text = await r.text();
        let json = null;
        try { json = JSON.parse(text); } catch (e) { /* not JSON */ }
        // (Access-Control-Allow-Origin itself is not exposed to scripts; that the
        // credentialed response is readable at all proves it matched.)
        return { name, ok: true, status: r.status, json, text: json ? null : text.slice(0, 300) };
      } catch (e) {
        return { name, ok: false, error: String(e) };
      }
    }
    return {
      origin: location.origin,
      simple: await attempt('simple', `${target}api/data?via=simple`, { credentials: 'include' }),
      preflighted: await attempt('preflighted', `${target}api/data?via=preflight`, {
        method: 'PUT', credentials: 'include',
        headers: { 'Content-Type': 'application/json', 'X-Custom-Thing': 'yes' },
        body: JSON.stringify({ hello: 'sandbox' }),
      }),
      ownCors: await attempt('ownCors', `${target}api/data?own_cors=1`, { credentials: 'include' }),
      unauthenticated: await attempt('unauthenticated', `${unsignedTarget}api/data`,
                                     { credentials: 'include' }),
    };
  }, { target, unsignedTarget });
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-quic',
         '--no-first-run', '--disable-component-update', '--disable-sync'],
});
try {
  mkdirSync(cfg.artifacts, { recursive: true });
  const ctxOpts = { viewport: { width: 1000, height: 720 } };
  if (cfg.userAgent) ctxOpts.userAgent = cfg.userAgent;
  const ctx = await browser.newContext(ctxOpts);
  const page = await ctx.newPage();

  // 1. Signed URL -> warning page.
  let resp = await page.goto(cfg.signedUrl, { waitUntil: 'load' });
  out.steps.warning = await pageInfo(page, resp);
  out.steps.warning.formAction = await page.locator('form').first()
    .getAttribute('action').catch(() => null);
  await page.screenshot({ path: join(cfg.artifacts, 'warning.png'), fullPage: true });
  out.steps.cookiesAfterWarning = (await ctx.cookies()).map(c => ({
    name: c.name, domain: c.domain, httpOnly: c.httpOnly, sameSite: c.sameSite, path: c.path }));

  // 2. Click the button -> the sandbox's page.
  const navs = [];
  page.on('response', r => { if (r.request().isNavigationRequest()) navs.push(
    { url: r.url(), status: r.status(), method: r.request().method(),
      location: r.headers()['location'] || null }); });
  // The accept step answers 200 with a meta refresh (issue 10 item 6): wait
  // for its answer, then for the navigation the refresh starts.
  await Promise.all([
    page.waitForResponse(r => r.url().includes('accept-daytona-preview-warning'),
                         { timeout: 10000 }),
    page.locator('button').first().click(),
  ]);
  await page.waitForURL(u => !String(u).includes('accept-daytona-preview-warning'),
                        { timeout: 10000 });
  await page.waitForLoadState('load');
  out.steps.afterClick = await pageInfo(page, null);
  out.steps.clickNavigations = navs.slice();
  out.steps.cookiesAfterClick = (await ctx.cookies()).map(c => ({
    name: c.name, domain: c.domain, httpOnly: c.httpOnly, sameSite: c.sameSite, path: c.path }));

  // 3. The signed token expires (the test deletes it); the auth cookie carries on.
  await pause('token-expired');
  resp = await page.reload({ waitUntil: 'load' });
  out.steps.reload = await pageInfo(page, resp);

  // 4. Another sandbox's page fetches this one with credentials.
  const other = await ctx.newPage();
  resp = await other.goto(cfg.otherUrl, { waitUntil: 'load' });
  out.steps.otherPage = await pageInfo(other, resp);
  out.steps.fetches = await crossOriginFetches(other, cfg.signedUrl, cfg.unsignedUrl);

  // 5. Error pages, in a fresh context (no cookies).
  const ctx2 = await browser.newContext(ctxOpts);
  const p2 = await ctx2.newPage();
  resp = await p2.goto(cfg.errorUrl, { waitUntil: 'load' });
  out.steps.errorPage = await pageInfo(p2, resp);
  await p2.screenshot({ path: join(cfg.artifacts, 'error.png'), fullPage: true });
  resp = await p2.goto(cfg.unsignedUrl, { waitUntil: 'load' });
  out.steps.unauthorizedPage = await pageInfo(p2, resp);
  await p2.screenshot({ path: join(cfg.artifacts, 'error-401.png'), fullPage: true });
  // The signed URL again, now that its token is gone, without the auth cookie.
  resp = await p2.goto(cfg.signedUrl, { waitUntil: 'load' });
  out.steps.expiredNoCookie = await pageInfo(p2, resp);
  await ctx2.close();
  await ctx.close();
} catch (e) {
  out.errors.push(String(e && e.stack || e));
} finally {
  await browser.close().catch(() => {});
  process.stdout.write(`RESULT ${JSON.stringify(out)}\n`);
  process.exit(0);
}
