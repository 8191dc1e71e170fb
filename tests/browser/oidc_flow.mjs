// Headless Chromium through the preview proxy's OIDC login: private sandbox ->
// warning page -> accept -> 307 to the OpenID provider -> its login form,
// filled and submitted -> /callback -> back at the sandbox page, whose
// sub-resources load with the auth cookie -> reload (the cookie alone) ->
// a sandbox of another organisation (refused after the provider's answer).
// Driven by tests/integration/test_browser_oidc.py.
//
//   node oidc_flow.mjs '<json config>'
//
// Config: {privateUrl, otherOrgUrl, idpOrigin, user, password, userAgent?}
// stdout: one line "RESULT <json>" with everything observed; the checks are
// made by the test, not here.
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.argv[2]);
const out = { steps: {}, errors: [] };

async function pageInfo(page, resp) {
  return {
    url: page.url(),
    status: resp ? resp.status() : null,
    title: await page.title(),
    text: (await page.locator('body').innerText().catch(() => '')).slice(0, 3000),
    appName: await page.locator('#app').textContent({ timeout: 500 }).catch(() => null),
    forms: await page.locator('form').count(),
  };
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-quic',
         '--no-first-run', '--disable-component-update', '--disable-sync'],
});
try {
  const ctxOpts = { viewport: { width: 1000, height: 720 } };
  if (cfg.userAgent) ctxOpts.userAgent = cfg.userAgent;
  const ctx = await browser.newContext(ctxOpts);
  const page = await ctx.newPage();
  const nav = [];   // every main-frame response: url, status, method
  page.on('response', (r) => {
    if (r.request().isNavigationRequest() && r.frame() === page.mainFrame()) {
      nav.push({ url: r.url(), status: r.status(), method: r.request().method() });
    }
  });
  const blocked = [];
  page.on('requestfailed', (r) => blocked.push({ url: r.url(), error: r.failure()?.errorText }));

  // 1. The private sandbox: the warning page first.
  let resp = await page.goto(cfg.privateUrl, { waitUntil: 'load' });
  out.steps.warning = await pageInfo(page, resp);

  // 2. Accept -> (meta refresh) -> preview -> 307 -> the provider's login form.
  await page.locator('button').first().click();
  await page.locator('input[name="login"]').waitFor({ timeout: 15000 });
  out.steps.loginForm = { url: page.url(), navigations: nav.slice() };

  // 3. The form, as a person fills it.
  nav.length = 0;
  await page.locator('input[name="login"]').fill(cfg.user);
  await page.locator('input[name="password"]').fill(cfg.password);
  await Promise.all([
    page.waitForURL(cfg.privateUrl, { timeout: 15000 }),
    page.locator('button[type="submit"], input[type="submit"]').first().click(),
  ]);
  await page.locator('#app').waitFor({ timeout: 10000 });
  out.steps.back = await pageInfo(page, null);
  out.steps.back.navigations = nav.slice();
  out.steps.cookies = (await ctx.cookies()).map((c) => ({
    name: c.name, domain: c.domain, httpOnly: c.httpOnly, sameSite: c.sameSite, path: c.path,
  }));

  // 4. Sub-resources of the page: an image, a fetch and a stylesheet, same origin.
  const sub = [];
  const onSub = (r) => {
    if (!r.request().isNavigationRequest()) sub.push({ url: r.url(), status: r.status() });
  };
  page.on('response', onSub);
  out.steps.fetch = await page.evaluate(async () => {
    const r = await fetch('/api/data?from=page');
    const j = await r.json().catch(() => null);
    const load = (tag, attr, url) => new Promise((resolve) => {
      const el = document.createElement(tag);
      if (tag === 'link') el.rel = 'stylesheet';
      el.onload = () => resolve('load');
      el.onerror = () => resolve('error');
      el[attr] = url;
      document.head.appendChild(el);
    });
    await load('img', 'src', '/pixel.png');
    await load('link', 'href', '/style.css');
    return { status: r.status, json: j };
  });
  page.off('response', onSub);
  out.steps.subresources = sub;

  // 5. Reload: the cookie alone, no trip to the provider.
  nav.length = 0;
  resp = await page.reload({ waitUntil: 'load' });
  out.steps.reload = await pageInfo(page, resp);
  out.steps.reload.navigations = nav.slice();

  // 6. Another organisation's sandbox: warning, accept, the provider (already
  // signed in: no form), then the callback refuses.
  nav.length = 0;
  resp = await page.goto(cfg.otherOrgUrl, { waitUntil: 'load' });
  out.steps.otherWarning = await pageInfo(page, resp);
  await page.locator('button').first().click();
  await page.waitForURL((u) => u.pathname === '/callback', { timeout: 15000 });
  await page.waitForLoadState('load');
  out.steps.other = await pageInfo(page, null);
  out.steps.other.navigations = nav.slice();
  out.steps.blocked = blocked;
  await ctx.close();
} catch (e) {
  out.errors.push(String(e && e.stack ? e.stack : e));
} finally {
  await browser.close();
  process.stdout.write(`RESULT ${JSON.stringify(out)}\n`);
}
