// The supervisor's side of tests/tests/dashboard.rs, in headless Chromium
// driven by Playwright. Talks to the Rust test over stdin/stdout: prints
// READY, SEEN <report>, RETURNED, DONE; waits for a line on stdin before
// each step that needs the officer's device to have synced.
//
// Under the dashboard's Content-Security-Policy: the live inbox still
// updates (its script runs), no violation is reported, and the headers are
// on the responses the browser got. A page of another origin (a server
// this script runs, and a data: page) can neither post the dashboard's
// forms (403, even with the session's token) nor frame its pages.
//
// env: FR_URL, FR_STAR, FR_PASSWORD, FR_SCREENSHOT, FR_CHROMIUM
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { createServer } from 'node:http';

const rl = createInterface({ input: process.stdin });
const lines = rl[Symbol.asyncIterator]();
const next = async () => (await lines.next()).value;
const say = (s) => process.stdout.write(s + '\n');
const T = 30_000;
let page;
let step = 'start';

// Another origin: serves the page it is asked for (a form posting to the
// dashboard, or a frame of it).
const foreign = createServer((req, res) => {
  const u = new URL(req.url, 'http://x');
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(u.searchParams.get('html') || '');
});
await new Promise((ok) => foreign.listen(0, '127.0.0.1', ok));
const foreignUrl = (html) =>
  `http://127.0.0.1:${foreign.address().port}/?html=${encodeURIComponent(html)}`;

// What the browser saw: CSP violations (reported by the page itself),
// console messages, and every response from the station.
const violations = [];
const consoleLines = [];
const responses = [];
const base = process.env.FR_URL;

const browser = await chromium.launch({
  executablePath: process.env.FR_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
try {
  // The test station's certificate is self-signed (a supervisor's browser
  // would be given it to trust).
  page = await browser.newPage({ viewport: { width: 1280, height: 900 }, ignoreHTTPSErrors: true });
  await page.exposeFunction('frViolation', (v) => violations.push(v));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) =>
      window.frViolation(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
  });
  page.on('console', (m) => consoleLines.push(m.text()));
  page.on('response', (r) => { if (r.url().startsWith(base)) responses.push(r); });
  const cspErrors = () => consoleLines.filter((l) => /Content Security Policy|Refused to/i.test(l));

  // A wrong password is refused.
  step = "await page.goto(base + '/dashboard');";
  await page.goto(base + '/dashboard');
  step = "await page.fill('input[name=star]', process.env.FR_STAR);";
  await page.fill('input[name=star]', process.env.FR_STAR);
  step = "await page.fill('input[name=password]', 'not the password');";
  await page.fill('input[name=password]', 'not the password');
  step = "await page.fill('input[name=code]', '000000');";
  await page.fill('input[name=code]', '000000');
  step = 'await page.click(\'button:has-text("Sign in")\');';
  await page.click('button:has-text("Sign in")');
  step = "await page.getByRole('alert').filter({ hasText: 'not recognised' }).wa";
  await page.getByRole('alert').filter({ hasText: 'not recognised' }).waitFor({ timeout: T });

  step = "await page.fill('input[name=star]', process.env.FR_STAR);";
  await page.fill('input[name=star]', process.env.FR_STAR);
  step = "await page.fill('input[name=password]', process.env.FR_PASSWORD);";
  await page.fill('input[name=password]', process.env.FR_PASSWORD);
  step = "await page.fill('input[name=code]', process.env.FR_CODE);";
  await page.fill('input[name=code]', process.env.FR_CODE);
  step = 'await page.click(\'button:has-text("Sign in")\');';
  await page.click('button:has-text("Sign in")');
  step = "await page.getByRole('heading', { name: 'Inbox' }).waitFor({ timeout: ";
  await page.getByRole('heading', { name: 'Inbox' }).waitFor({ timeout: T });
  // Let the event stream connect before the officer syncs.
  step = 'await page.waitForTimeout(500);';
  await page.waitForTimeout(500);
  say('READY');

  // The officer's report appears without a reload.
  const row = page.locator('#inbox tr[data-report]').first();
  await row.waitFor({ timeout: T });
  const report = await row.getAttribute('data-report');
  step = 'await page.locator(`#inbox tr[data-report="${report}"] .badge.submitte';
  await page.locator(`#inbox tr[data-report="${report}"] .badge.submitted`).waitFor({ timeout: T });
  say('SEEN ' + report);

  // Return it with a comment.
  await row.locator('a').click();
  step = "await page.fill('textarea[name=comment]', 'Add the supervising agent\\'";
  await page.fill('textarea[name=comment]', 'Add the supervising agent\'s badge number.');
  step = 'await page.click(\'button:has-text("Return to officer")\');';
  await page.click('button:has-text("Return to officer")');
  step = "await page.locator('h1 .badge.returned').waitFor({ timeout: T });";
  await page.locator('h1 .badge.returned').waitFor({ timeout: T });
  say('RETURNED');

  // The resubmission arrives live in the inbox.
  step = "await page.goto(base + '/dashboard');";
  await page.goto(base + '/dashboard');
  await next(); // the officer has amended and resubmitted
  step = 'await page.locator(`#inbox tr[data-report="${report}"] .badge.submitte';
  await page.locator(`#inbox tr[data-report="${report}"] .badge.submitted`).waitFor({ timeout: T });
  step = 'await page.locator(`#inbox tr[data-report="${report}"] a`).click();';
  await page.locator(`#inbox tr[data-report="${report}"] a`).click();
  step = "await page.getByText('after submission').first().waitFor({ timeout: T ";
  await page.getByText('after submission').first().waitFor({ timeout: T }); // the amendment is shown

  // Another origin posts the approval form, even holding the session's
  // CSRF token: refused, from a served page and from a data: page alike.
  const reportUrl = page.url();
  step = 'read the CSRF token';
  const csrf = await page.locator('form[action$="/approve"] input[name=csrf]').getAttribute('value');
  const forgedForm = `<form method=post action="${reportUrl}/approve">
    <input type=hidden name=csrf value="${csrf}"><button>Win a prize</button></form>`;
  for (const [what, url] of [['served page', foreignUrl(forgedForm)],
                             ['data: page', 'data:text/html,' + encodeURIComponent(forgedForm)]]) {
    step = `cross-origin POST from a ${what}`;
    await page.goto(url);
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith('/approve') && r.request().method() === 'POST', { timeout: T }),
      page.click('button:has-text("Win a prize")'),
    ]);
    if (resp.status() !== 403) throw new Error(`a cross-origin POST from a ${what} got ${resp.status()}`);
  }
  // The report cannot be framed by another origin.
  step = 'frame the report page from another origin';
  const framing = consoleLines.length;
  await page.goto(foreignUrl(`<h2>framing</h2><iframe src="${reportUrl}" width=800 height=600></iframe>`));
  await page.getByText('framing').waitFor({ timeout: T });
  await page.waitForTimeout(1500);
  const framed = page.frames().find((f) => f !== page.mainFrame());
  if (!framed) throw new Error('no frame');
  const framedText = await framed.evaluate(() => document.body ? document.body.innerText : '').catch((e) => 'ERR ' + e.message);
  const framedUrl = framed.url();
  // Chromium puts its error page in the frame instead of the station's.
  if (framedUrl.startsWith(base) || framedText.includes('FieldReport')) {
    throw new Error(`the report page loaded inside another origin's frame (${framedUrl})`);
  }
  if (!consoleLines.slice(framing).some((l) => l.includes("frame-ancestors 'none'"))) {
    throw new Error('no frame-ancestors refusal seen: ' + consoleLines.slice(framing).join(' | '));
  }
  // Still submitted: nothing the other origin sent was done.
  step = 'back to the report';
  await page.goto(reportUrl);
  await page.locator('h1 .badge.submitted').waitFor({ timeout: T });
  step = 'await page.click(\'button:has-text("Approve")\');';
  await page.click('button:has-text("Approve")');
  step = "await page.locator('h1 .badge.approved').waitFor({ timeout: T });";
  await page.locator('h1 .badge.approved').waitFor({ timeout: T });
  step = "await page.fill('input[name=date]', '2026-11-24');";
  await page.fill('input[name=date]', '2026-11-24');
  step = "await page.fill('input[name=reference]', 'SA-2026-0114');";
  await page.fill('input[name=reference]', 'SA-2026-0114');
  step = "await page.fill('textarea[name=felonies]', 'Aggravated battery (720 IL";
  await page.fill('textarea[name=felonies]', 'Aggravated battery (720 ILCS 5/12-3.05)');
  step = 'await page.click(\'button:has-text("Refer to the State\\\'s Attorney")\');';
  await page.click('button:has-text("Refer to the State\'s Attorney")');
  step = "await page.locator('h1 .badge.referred').waitFor({ timeout: T });";
  await page.locator('h1 .badge.referred').waitFor({ timeout: T });
  step = "await page.getByText('SA-2026-0114').waitFor({ timeout: T });";
  await page.getByText('SA-2026-0114').waitFor({ timeout: T });
  await page.screenshot({ path: process.env.FR_SCREENSHOT, fullPage: true });

  // The same pages fit a phone.
  await page.setViewportSize({ width: 390, height: 844 });
  step = "await page.goto(base + '/dashboard');";
  await page.goto(base + '/dashboard');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  if (overflow) throw new Error('the inbox scrolls sideways on a phone');
  await page.screenshot({ path: process.env.FR_SCREENSHOT.replace(/\.png$/, '-phone.png'), fullPage: true });

  // No policy violation on any dashboard page (the framing refusal above
  // is the other origin's page, which is not ours).
  step = 'no CSP violation';
  if (violations.length) throw new Error('CSP violations: ' + violations.join(' | '));
  const ourErrors = cspErrors().filter((l) => !l.includes('frame-ancestors'));
  if (ourErrors.length) throw new Error('CSP errors in the console: ' + ourErrors.join(' | '));
  // The headers, on the responses the browser got.
  step = 'headers on what the browser got';
  const check = async (what, pred, wantCache) => {
    const r = responses.find(pred);
    if (!r) throw new Error(`the browser got no ${what}`);
    const h = await r.allHeaders();
    const csp = h['content-security-policy'] || '';
    for (const part of ["script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"]) {
      if (!csp.includes(part)) throw new Error(`${what}: CSP "${csp}" lacks ${part}`);
    }
    if (csp.includes('unsafe')) throw new Error(`${what}: ${csp}`);
    if (h['x-content-type-options'] !== 'nosniff') throw new Error(`${what}: no nosniff`);
    if (wantCache && h['cache-control'] !== wantCache) {
      throw new Error(`${what}: cache-control ${h['cache-control']}`);
    }
  };
  await check('report page', (r) => r.url() === reportUrl && r.request().method() === 'GET', 'no-store');
  await check('photo', (r) => r.url().includes('/dashboard/media/'), 'no-store');
  await check('live inbox rows', (r) => r.url().endsWith('/dashboard/inbox'), 'no-store');
  await check('script', (r) => r.url().endsWith('/dashboard/app.js'), null);
  await check('sign-in page', (r) => r.url().endsWith('/dashboard/login'), 'no-store');
  // The listener is real: an inline script injected now is blocked, and
  // reported.
  step = 'an injected inline script is blocked';
  await page.evaluate(() => {
    const s = document.createElement('script');
    s.textContent = 'window.frInlineRan = true;';
    document.body.appendChild(s);
  });
  await page.waitForTimeout(300);
  if (await page.evaluate(() => window.frInlineRan === true)) throw new Error('an inline script ran');
  if (!violations.some((v) => v.startsWith('script-src'))) {
    throw new Error('the blocked inline script was not reported: ' + violations.join(' | '));
  }
  say('DONE');
} catch (e) {
  process.exitCode = 1;
  // What the page showed, for the CI artifacts (before reporting: the test
  // stops this process when it reads the error).
  try {
    const { writeFileSync } = await import('node:fs');
    writeFileSync(process.env.FR_SCREENSHOT.replace(/\.png$/, '-error.html'), await page.content());
    await page.screenshot({ path: process.env.FR_SCREENSHOT.replace(/\.png$/, '-error.png'), fullPage: true });
  } catch (_) { /* the browser may be gone */ }
  say('ERROR at ' + step + ': ' + (e && e.message ? e.message.split('\n')[0] : e));
} finally {
  rl.close();
  foreign.close();
  await browser.close();
}
process.exit(process.exitCode ?? 0);
