// Drives the web terminal through the preview proxy in headless Chromium
// (Debian's /usr/bin/chromium; playwright-core never downloads a browser).
//
//   node terminal.mjs URL [TYPE [EXPECT [TIMEOUT_MS]]]
//
// Opens URL (the xterm.js page served by tests/integration/servers/terminal.py
// through the proxy), waits for its WebSocket to open and for a shell prompt,
// types TYPE followed by Enter, and waits until EXPECT appears in the terminal
// (xterm's buffer and its DOM rows). Prints one JSON line with what it saw and
// exits 0 when EXPECT was seen, 1 otherwise.
import { chromium } from 'playwright-core';

const [url, typed = 'echo ready-$((6*7))', expect = 'ready-42', timeoutArg = '30000'] =
  process.argv.slice(2);
const timeout = Number(timeoutArg);
const result = { url, ok: false, status: null, responses: [], wsOpen: false, sawPrompt: false,
                 sawExpectInBuffer: false, sawExpectInDom: false, text: '', dom: '', error: null,
                 console: [] };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  timeout,
  args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-quic',
         '--no-first-run', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  page.on('console', (m) => result.console.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => result.console.push(`pageerror: ${e.message}`));
  page.on('response', (r) => result.responses.push(`${r.status()} ${r.url()}`));
  page.on('websocket', (ws) => result.responses.push(`websocket ${ws.url()}`));
  const resp = await page.goto(url, { waitUntil: 'load', timeout });
  result.status = resp ? resp.status() : null;
  if (result.status !== 200) throw new Error(`page load answered ${result.status}`);
  await page.waitForFunction(() => window.__termState && window.__termState.open, null, { timeout });
  result.wsOpen = true;
  // a prompt ("$ ") from the shell on the pty
  await page.waitForFunction(() => /\$ ?$/m.test(window.__termText()), null, { timeout });
  result.sawPrompt = true;
  await page.evaluate(() => window.__term.focus());
  await page.keyboard.type(typed, { delay: 5 });
  // Enter only once the shell has echoed the whole line: keys typed while the
  // shell is still setting up its terminal can be dropped by the pty.
  await page.waitForFunction((t) => window.__termText().includes(t), typed, { timeout });
  await page.keyboard.press('Enter');
  await page.waitForFunction((e) => window.__termText().split('\n').some((l) => l.trim() === e),
                             expect, { timeout });
  result.sawExpectInBuffer = true;
  // xterm paints its DOM rows on the next animation frame: wait for the paint too,
  // before reading them (the bytes are already in the terminal's buffer).
  await page.waitForFunction((e) => {
    const rows = document.querySelector('.xterm-rows');
    return rows && Array.from(rows.children).some((r) => r.textContent.trim() === e);
  }, expect, { timeout });
  result.text = await page.evaluate(() => window.__termText());
  result.dom = await page.evaluate(() => {
    const rows = document.querySelector('.xterm-rows');
    return rows ? Array.from(rows.children).map((r) => r.textContent).join('\n') : '';
  });
  result.sawExpectInDom = result.dom.split('\n').some((l) => l.trim() === expect);
  result.ok = result.sawExpectInBuffer && result.sawExpectInDom;
} catch (e) {
  result.error = String(e && e.message || e).split('\n')[0];
  try {
    const pages = browser.contexts().flatMap((c) => c.pages());
    if (pages.length) result.text = await pages[0].evaluate(() => window.__termText ? window.__termText() : document.body.innerText);
  } catch (_) { /* page gone */ }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result) + '\n');
process.exit(result.ok ? 0 : 1);
