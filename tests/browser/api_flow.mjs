// Headless Chromium through the preview proxy in API mode: signed preview URL
// -> the organisation's warning page -> click -> the sandbox's page and its
// sub-resources (stylesheet, script, image, fetch) -> the signed token is
// revoked -> reload (the auth cookie alone) -> the revoked URL in a context
// without the auth cookie. Driven by
// tests/integration/test_browser_api_mode.py.
//
//   node api_flow.mjs '<json config>'
//
// Config: {signedUrl, artifacts, userAgent?}
// Pauses: "revoked" (before the reload: the test revokes the token), "reloaded".
// stdout protocol (as flow.mjs): "PAUSE <name>" lines, each answered by one
// line on stdin, then one final line "RESULT <json>" with everything
// observed. Checks are made by the test, not here.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.argv[2]);
const out = { steps: {}, errors: [], console: [], pageErrors: [], failedRequests: [] };
const stdin = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function pause(name) {
  process.stdout.write(`PAUSE ${name}\n`);
  const { value, done } = await stdin.next();
  if (done) throw new Error(`stdin closed while paused at ${name}`);
  return value;
}

function cookies(list) {
  return list.map(c => ({ name: c.name, domain: c.domain, httpOnly: c.httpOnly,
                          sameSite: c.sameSite, path: c.path, expires: c.expires }));
}

// Every response the page saw (navigation and sub-resources), in order.
function recordResponses(page, into) {
  page.on('response', r => into.push({
    url: r.url(), status: r.status(), method: r.request().method(),
    type: r.request().resourceType(), nav: r.request().isNavigationRequest(),
    location: r.headers()['location'] || null,
    contentType: r.headers()['content-type'] || null,
  }));
}

function watch(page, tag) {
  page.on('console', m => out.console.push({ page: tag, type: m.type(), text: m.text() }));
  page.on('pageerror', e => out.pageErrors.push({ page: tag, error: String(e) }));
  page.on('requestfailed', r => out.failedRequests.push(
    { page: tag, url: r.url(), error: r.failure() ? r.failure().errorText : null }));
}

async function pageInfo(page, resp) {
  return {
    url: page.url(),
    status: resp ? resp.status() : null,
    headers: resp ? resp.headers() : null,
    title: await page.title().catch(() => null),
    text: (await page.locator('body').innerText().catch(() => '')).slice(0, 4000),
    appName: await page.locator('#app').textContent({ timeout: 500 }).catch(() => null),
    forms: await page.locator('form').count(),
    buttons: await page.locator('button').count(),
  };
}

// What the sandbox page's sub-resources did, read inside the page once the
// script and the fetch have had their chance (bounded wait).
async function subresources(page) {
  await page.waitForFunction(() => {
    const f = document.getElementById('fetch');
    const img = document.getElementById('img');
    return f && f.textContent !== 'pending' && img && img.complete;
  }, null, { timeout: 10000 }).catch(() => {});
  return page.evaluate(() => {
    const img = document.getElementById('img');
    const h1 = document.getElementById('app');
    const text = id => (document.getElementById(id) ? document.getElementById(id).textContent
                                                     : null);
    return {
      js: text('js'),
      fetch: text('fetch'),
      served: text('served'),
      imgComplete: img ? img.complete : null,
      imgWidth: img ? img.naturalWidth : null,
      cssColor: h1 ? getComputedStyle(h1).color : null,
      stylesheets: document.styleSheets.length,
    };
  });
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
  watch(page, 'main');

  // 1. The signed preview URL -> the organisation's warning page.
  const first = [];
  recordResponses(page, first);
  let resp = await page.goto(cfg.signedUrl, { waitUntil: 'load' });
  out.steps.warning = await pageInfo(page, resp);
  out.steps.warning.formAction = await page.locator('form').first()
    .getAttribute('action').catch(() => null);
  out.steps.warning.responses = first.slice();
  await page.screenshot({ path: join(cfg.artifacts, 'api-warning.png'), fullPage: true });
  out.steps.cookiesAfterWarning = cookies(await ctx.cookies());

  // 2. "Continue to the preview" -> the sandbox's page and its sub-resources.
  const click = [];
  recordResponses(page, click);
  // The accept step answers 200 with a meta refresh (issue 10 item 6): wait
  // for its answer, then for the navigation the refresh starts.
  await Promise.all([
    page.waitForResponse(r => r.url().includes('accept-daytona-preview-warning'),
                         { timeout: 10000 }),
    page.getByText('Continue to the preview').first().click(),
  ]);
  await page.waitForURL(u => !String(u).includes('accept-daytona-preview-warning'),
                        { timeout: 10000 });
  await page.waitForLoadState('load');
  out.steps.afterClick = await pageInfo(page, null);
  out.steps.afterClick.sub = await subresources(page);
  out.steps.afterClick.responses = click.slice();
  out.steps.cookiesAfterClick = cookies(await ctx.cookies());
  await page.screenshot({ path: join(cfg.artifacts, 'api-page.png'), fullPage: true });

  // 3. The signed token is revoked (the test does it); the auth cookie carries on.
  await pause('revoked');
  const reload = [];
  recordResponses(page, reload);
  resp = await page.reload({ waitUntil: 'load' });
  out.steps.reload = await pageInfo(page, resp);
  out.steps.reload.sub = await subresources(page);
  out.steps.reload.responses = reload.slice();
  await page.screenshot({ path: join(cfg.artifacts, 'api-reload.png'), fullPage: true });
  await pause('reloaded');

  // 4. The revoked URL again in a context without the auth cookie (only the
  //    warning's accepted cookie, so the warning page is not what answers).
  const ctx2 = await browser.newContext(ctxOpts);
  const host = new URL(cfg.signedUrl).hostname;
  await ctx2.addCookies([{ name: 'daytona-preview-page-accepted', value: 'true', domain: host,
                           path: '/', httpOnly: true, sameSite: 'Lax' }]);
  const p2 = await ctx2.newPage();
  watch(p2, 'noCookie');
  resp = await p2.goto(cfg.signedUrl, { waitUntil: 'load' });
  out.steps.revokedNoCookie = await pageInfo(p2, resp);
  await p2.screenshot({ path: join(cfg.artifacts, 'api-revoked.png'), fullPage: true });
  await ctx2.close();
  await ctx.close();
} catch (e) {
  out.errors.push(String(e && e.stack || e));
} finally {
  await browser.close().catch(() => {});
  process.stdout.write(`RESULT ${JSON.stringify(out)}\n`);
  process.exit(0);
}
