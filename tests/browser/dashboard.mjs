// The supervisor's side of tests/tests/dashboard.rs, in headless Chromium
// driven by Playwright. Talks to the Rust test over stdin/stdout: prints
// READY, SEEN <report>, RETURNED, DONE; waits for a line on stdin before
// each step that needs the officer's device to have synced.
//
// env: FR_URL, FR_STAR, FR_PASSWORD, FR_SCREENSHOT, FR_CHROMIUM
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';

const rl = createInterface({ input: process.stdin });
const lines = rl[Symbol.asyncIterator]();
const next = async () => (await lines.next()).value;
const say = (s) => process.stdout.write(s + '\n');
const T = 30_000;
let page;
let step = 'start';

const browser = await chromium.launch({
  executablePath: process.env.FR_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
try {
  // The test station's certificate is self-signed (a supervisor's browser
  // would be given it to trust).
  page = await browser.newPage({ viewport: { width: 1280, height: 900 }, ignoreHTTPSErrors: true });
  const base = process.env.FR_URL;

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
  await browser.close();
}
process.exit(process.exitCode ?? 0);
