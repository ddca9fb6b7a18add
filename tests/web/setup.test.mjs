// Browser test of the first-boot page, run by tests/web.rs against the real binary on a blank box
// (TLS, no [site]). Every wait has a timeout; the harness bounds the whole run.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const AXE = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const ORIGIN = process.env.SITEGATE_ORIGIN;
const OUT = process.env.SITEGATE_WEB_OUT;
const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 1280, height: 800 };
const log = (...a) => console.error('[setup]', ...a);

const serious = [];
async function screen(page, name) {
  await page.evaluate(AXE);
  const violations = await page.evaluate(async () => (await window.axe.run(document)).violations
    .map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help })));
  const bad = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  log(`axe ${name}: ${violations.length} violations, ${bad.length} serious/critical`, bad);
  serious.push(...bad.map((v) => ({ screen: name, ...v })));
  await page.screenshot({ path: path.join(OUT, `${name}-phone.png`), fullPage: true });
  await page.setViewportSize(DESKTOP);
  await page.screenshot({ path: path.join(OUT, `${name}-desktop.png`), fullPage: true });
  await page.setViewportSize(PHONE);
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run'],
  timeout: 30000,
});
let page = null;
try {
  const context = await browser.newContext({ viewport: PHONE, ignoreHTTPSErrors: true });
  page = await context.newPage();
  page.setDefaultTimeout(15000);
  page.on('pageerror', (e) => { throw new Error(`page error: ${e.message}`); });

  // The blank box serves the first-boot form, with the certificate's fingerprint to pin: the
  // same one the harness computed from the certificate file.
  const resp = await page.goto(`${ORIGIN}/`);
  assert.match(resp.headers()['content-security-policy'], /script-src 'self'/);
  await page.getByRole('heading', { name: 'Set up this box' }).waitFor();
  assert.equal(await page.locator('#fp').textContent(), process.env.SITEGATE_FINGERPRINT);
  await screen(page, 'setup');

  const fill = async (label, value) => page.getByLabel(label, { exact: true }).fill(value);
  await fill('Site id', process.env.SITEGATE_SITE);
  await fill('Gateway id (this box)', 'gw-web');
  await fill('Name of the site (optional)', 'Plant room');
  await fill('Fleet trust key id', process.env.SITEGATE_KID);
  await fill('Fleet trust public key', process.env.SITEGATE_PUBLIC_KEY);
  // A wrong code is refused in words and changes nothing.
  await fill('Setup code', 'WRNG-CODE-XXXX');
  await page.getByRole('button', { name: 'Set up this box' }).click();
  await page.getByText('The setup code is not right. After 5 wrong codes the box shows a new one on its console.').waitFor();
  await screen(page, 'setup-wrong-code');
  await fill('Setup code', process.env.SITEGATE_SETUP_CODE);
  await page.getByRole('button', { name: 'Set up this box' }).click();
  await page.getByText(`Site ${process.env.SITEGATE_SITE}, gateway gw-web. The configuration is written.`).waitFor();
  assert.equal(await page.locator('#fp').textContent(), process.env.SITEGATE_FINGERPRINT);
  // The box restarts on its new config; the page follows it.
  await page.getByText("The box is running as the site's gateway.").waitFor({ timeout: 60000 });
  await screen(page, 'setup-done');

  // Then the installer signs in with a token signed by the key given at setup (no bundle yet).
  await page.getByRole('link', { name: 'Sign in with your installer token' }).click();
  await page.getByLabel('or choose the token file').setInputFiles(process.env.SITEGATE_INSTALLER_TOKEN);
  await page.waitForFunction(() => document.getElementById('token').value.length > 0);
  await page.getByRole('button', { name: 'Sign in with token' }).click();
  await page.getByText('Ivo Installer').waitFor();
  await page.getByText('There are no units you can see on this box.').waitFor();
  // The scan page is offered (diagnose on the site) and lists the box's links: none yet.
  await page.getByRole('link', { name: 'Scan' }).click();
  await page.getByRole('heading', { name: 'Find units on a link' }).waitFor();
  assert.equal(await page.locator('#s-link option').count(), 0);
  await page.getByText('No links yet: add the bus the units are on.').waitFor();
  await screen(page, 'commission-links');

  // Commissioning from the page: a Modbus TCP link to the units' bus (here a simulator).
  const [simHost, simPort] = process.env.SITEGATE_SIM_ADDR.split(':');
  await fill('Link name', 'bus');
  await page.getByLabel('Kind', { exact: true }).selectOption('tcp');
  await fill('Host (IP address or name)', simHost);
  await fill('Port', simPort);
  await page.getByRole('button', { name: 'Add link' }).click();
  await page.getByText('Link bus is ready. Scan it below.').waitFor({ timeout: 40000 });
  assert.equal(await page.locator('#s-link option').count(), 1);
  await page.locator('tr[data-link="bus"]').waitFor();

  // Scan it: both devices answer with a suggested profile.
  await fill('From slave id', '1');
  await fill('To slave id', '8');
  await fill('Wait for each id (ms)', '150');
  await page.getByRole('button', { name: 'Start scan' }).click();
  await page.getByText(/Scan of link bus, ids 1–8 finished: 8 ids probed, 2 devices answered\./).waitFor({ timeout: 60000 });
  await screen(page, 'commission-scan');

  // Add both with the suggested profile and the ids and names typed on the phone.
  for (const [slave, id, name] of [[3, 'gen-1', 'Standby generator'], [7, 'hvac-1', 'Office AHU']]) {
    await page.getByLabel(`Unit id for slave ${slave}`).fill(id);
    await page.getByLabel(`Name for slave ${slave}`).fill(name);
    await page.getByRole('button', { name: `Add unit at slave ${slave}` }).click();
    await page.getByText(`Unit ${id} added.`).waitFor({ timeout: 40000 });
    await page.locator(`tr[data-slave="${slave}"] a`, { hasText: id }).waitFor();
  }
  await page.locator('tr[data-link="bus"] td', { hasText: 'gen-1, hvac-1' }).waitFor();
  await screen(page, 'commission-units');

  // The site view shows them.
  await page.getByRole('link', { name: '← All units' }).click();
  await page.getByText('Standby generator').waitFor({ timeout: 30000 });
  await page.getByText('Office AHU').waitFor({ timeout: 30000 });
  await screen(page, 'commission-site');
  await context.close();
  assert.deepEqual(serious, [], 'axe found serious or critical violations');
  log('done');
} catch (e) {
  // What the page showed when a step failed (the harness prints this with the error).
  if (page) {
    log('page at failure:', await page.locator('body').innerText().catch(() => '?'));
    log('me at failure:', await page.evaluate(async () => (await fetch('/api/v1/me')).text()).catch(() => '?'));
  }
  throw e;
} finally {
  await browser.close();
}
process.exit(0);
