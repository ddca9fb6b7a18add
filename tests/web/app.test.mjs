// Browser test of the local web app, run by tests/web.rs against the real daemon (TLS) with
// Modbus simulators. Talks to the harness over stdin/stdout (one JSON object per line); logs go to
// stderr. Every wait has a timeout; the harness bounds the whole run.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const AXE = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const ORIGIN = process.env.SITEGATE_ORIGIN;
const PASSWORD = process.env.SITEGATE_PASSWORD;
const OUT = process.env.SITEGATE_WEB_OUT;
const TOKEN_FILE = process.env.SITEGATE_INSTALLER_TOKEN;
const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 1280, height: 800 };
const log = (...a) => console.error('[web]', ...a);

// ----------------------------------------------------------------------------------------------
// Harness protocol
// ----------------------------------------------------------------------------------------------
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ctl(cmd, args = {}) {
  process.stdout.write(JSON.stringify({ cmd, ...args }) + '\n');
  const next = await Promise.race([
    lines.next(),
    new Promise((_, rej) => setTimeout(() => rej(new Error(`harness did not answer ${cmd}`)), 15000)),
  ]);
  return JSON.parse(next.value);
}
const writes = async () => (await ctl('writes')).writes;

// ----------------------------------------------------------------------------------------------
// Helpers
// ----------------------------------------------------------------------------------------------
const axeFindings = [];
async function axeCheck(page, screen) {
  await page.evaluate(AXE);
  const violations = await page.evaluate(async () => (await window.axe.run(document)).violations
    .map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help })));
  const bad = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  log(`axe ${screen}: ${violations.length} violations, ${bad.length} serious/critical`, bad);
  axeFindings.push({ screen, violations });
  return bad;
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(OUT, `${name}-phone.png`), fullPage: true });
  await page.setViewportSize(DESKTOP);
  await page.screenshot({ path: path.join(OUT, `${name}-desktop.png`), fullPage: true });
  await page.setViewportSize(PHONE);
}

async function newPage(browser) {
  const context = await browser.newContext({ viewport: PHONE, ignoreHTTPSErrors: true });
  const page = await context.newPage();
  page.setDefaultTimeout(10000);
  page.on('pageerror', (e) => { throw new Error(`page error: ${e.message}`); });
  return { context, page };
}

async function loginPassword(page, user) {
  await page.goto(`${ORIGIN}/`);
  await page.getByLabel('Email', { exact: true }).fill(`${user}@example.com`);
  await page.getByLabel('Password', { exact: true }).fill(PASSWORD);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.locator('li.card').first().waitFor();
}

async function enabledControls(page) {
  return page.locator('main').locator('button:not([disabled]), input:not([disabled]), select:not([disabled]), textarea:not([disabled])').count();
}

const seriousTotal = [];
async function screen(page, name) {
  seriousTotal.push(...(await axeCheck(page, name)).map((v) => ({ screen: name, ...v })));
  await shot(page, name);
}

// ----------------------------------------------------------------------------------------------
// The run
// ----------------------------------------------------------------------------------------------
const metrics = { build: process.env.SITEGATE_BUILD || 'unknown' };
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run'],
  timeout: 30000,
});
try {
  // --- The login page: headers, policy, accessibility.
  {
    const { context, page } = await newPage(browser);
    const resp = await page.goto(`${ORIGIN}/`);
    const csp = resp.headers()['content-security-policy'];
    assert.match(csp, /default-src 'self'/);
    assert.match(csp, /script-src 'self'/);
    assert.match(csp, /frame-ancestors 'none'/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
    await page.getByLabel('Email', { exact: true }).waitFor();
    await screen(page, 'login');
    // Wrong password: an error a person can act on, no session.
    await page.getByLabel('Email', { exact: true }).fill('vera@example.com');
    await page.getByLabel('Password', { exact: true }).fill('wrong password');
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    await page.getByText('Email, password or token not accepted.').waitFor();
    assert.equal((await context.cookies()).length, 0);
    await context.close();
  }

  // --- First load of the site view (cold cache, session cookie already set): bytes and time.
  {
    const { context, page } = await newPage(browser);
    const r = await context.request.post(`${ORIGIN}/web/session`, {
      data: { email: 'vera@example.com', password: PASSWORD },
    });
    assert.equal(r.status(), 201);
    const cookie = (await context.cookies()).find((c) => c.name === '__Host-sitegate_session');
    assert.ok(cookie, 'session cookie set');
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.secure, true);
    assert.equal(cookie.sameSite, 'Strict');
    const body = await r.json();
    assert.equal(body.token, undefined, 'the session token is never given to script');
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    await cdp.send('Network.setCacheDisabled', { cacheDisabled: true });
    const finished = new Map();
    const streamed = new Map();
    cdp.on('Network.loadingFinished', (e) => finished.set(e.requestId, e.encodedDataLength));
    cdp.on('Network.dataReceived', (e) => streamed.set(e.requestId, (streamed.get(e.requestId) || 0) + e.encodedDataLength));
    const t0 = Date.now();
    await page.goto(`${ORIGIN}/`);
    await page.locator('li.card').first().waitFor();
    metrics.first_render_ms = Date.now() - t0;
    let bytes = 0;
    for (const v of finished.values()) bytes += v;
    for (const [id, v] of streamed) if (!finished.has(id)) bytes += v;
    metrics.first_load_bytes = bytes;
    log(`first load: ${bytes} bytes, first render ${metrics.first_render_ms} ms`);
    assert.ok(bytes <= 150 * 1024, `first load ${bytes} bytes > 150 KB budget`);
    await context.close();
  }

  // --- Viewer: sees every unit, finds no way to write.
  {
    const { context, page } = await newPage(browser);
    await loginPassword(page, 'vera');
    assert.equal(await page.locator('li.card').count(), 4);
    await page.locator('li.card', { hasText: 'gen-1' }).getByText('online').waitFor();
    await screen(page, 'site-viewer');
    await ctl('reset_writes');
    for (const unit of ['hvac-1', 'gen-1']) {
      await page.goto(`${ORIGIN}/#/unit/${unit}`);
      await page.getByRole('heading', { level: 1, name: unit }).waitFor();
      await page.getByText('You can view this unit but not change it.').waitFor();
      assert.equal(await enabledControls(page), 0, `viewer has an enabled control on ${unit}`);
      assert.equal(await page.getByRole('heading', { name: 'Diagnostics' }).count(), 0);
      if (unit === 'hvac-1') await screen(page, 'unit-hvac-viewer');
    }
    assert.deepEqual(await writes(), []);

    // Latency: a value changed at the simulator appears on screen (site view, gen-1 fuel level).
    await page.goto(`${ORIGIN}/#/`);
    const fuel = page.locator('li.card', { hasText: 'gen-1' }).locator('dd', { hasText: '%' });
    await fuel.waitFor();
    const samples = [];
    for (const v of [41, 52, 63, 74, 45]) {
      const t0 = Date.now();
      await ctl('set_register', { slave: 1, address: 1027, value: v });
      await page.locator('li.card', { hasText: 'gen-1' }).getByText(`${v} %`).waitFor({ timeout: 10000 });
      samples.push(Date.now() - t0);
    }
    metrics.sim_to_screen_ms = samples;
    log('simulator → screen latency (ms):', samples);

    // A unit that stops answering: offline with the reason, its values marked stale; back when
    // it answers again.
    const hvac2 = page.locator('li.card', { hasText: 'hvac-2' });
    await ctl('silence', { slave: 3 });
    await hvac2.locator('.badge.offline').waitFor({ timeout: 15000 });
    await hvac2.getByText('no answer since').waitFor();
    await hvac2.locator('.val.stale').first().waitFor({ timeout: 5000 });
    await screen(page, 'site-unit-offline');
    await ctl('heal');
    await hvac2.locator('.badge.online').waitFor({ timeout: 15000 });

    // Logout ends the session server-side and clears the cookie.
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByText('You are signed out.').waitFor();
    assert.equal((await context.cookies()).length, 0);
    const after = await page.evaluate(async () => (await fetch('/api/v1/units')).status);
    assert.equal(after, 401);
    await context.close();
  }

  // --- Control-only: sets the HVAC setpoint, starts the generator; CSRF and CSP; revocation.
  {
    const { context, page } = await newPage(browser);
    await loginPassword(page, 'carl');
    assert.equal(await page.locator('li.card').count(), 2);
    await screen(page, 'site-control');

    // Setpoint: exactly one Modbus write, read back shown.
    await page.goto(`${ORIGIN}/#/unit/hvac-1`);
    const sp = page.locator('input[name="setpoint"]');
    await sp.waitFor();
    assert.equal(await sp.getAttribute('min'), '16');
    assert.equal(await sp.getAttribute('max'), '32');
    await ctl('reset_writes');
    await sp.fill('21.5');
    await page.locator('form:has(input[name="setpoint"]) button[type="submit"]').click();
    await page.locator('form:has(input[name="setpoint"]) .result.ok').getByText('reads back 21.5 °C').waitFor();
    assert.deepEqual(await writes(), [{ slave: 2, function: 6, address: 18, values: [215] }]);
    // The live value follows (next poll, next stream message).
    await page.locator('form:has(input[name="setpoint"]) .val').getByText('21.5 °C').waitFor({ timeout: 5000 });
    // Out of range: refused by the daemon before the bus, said in words.
    await ctl('reset_writes');
    await sp.fill('40');
    await page.locator('form:has(input[name="setpoint"]) button[type="submit"]').click();
    await page.locator('form:has(input[name="setpoint"]) .result.bad').getByText('The value is not accepted').waitFor();
    assert.deepEqual(await writes(), []);
    await screen(page, 'unit-hvac-control');

    // Generator: start in stop mode says why nothing happens; manual, then start.
    await page.goto(`${ORIGIN}/#/unit/gen-1`);
    await page.getByRole('heading', { level: 1, name: 'gen-1' }).waitFor();
    await ctl('reset_writes');
    const cmd = (name) => page.locator(`button[data-command="${name}"]`);
    await cmd('start').click();
    const dlg = page.getByRole('dialog');
    await dlg.getByText('Stop mode').waitFor();
    await screen(page, 'unit-gen-confirm');
    await dlg.getByRole('button', { name: /^Yes/ }).click();
    await page.locator('.result.warn', { hasText: 'in Stop mode' }).waitFor();
    await cmd('manual').click();
    await page.getByRole('dialog').getByRole('button', { name: /^Yes/ }).click();
    await page.locator('dd, td').getByText('manual', { exact: true }).first().waitFor();
    await cmd('start').click();
    await page.getByRole('dialog').getByRole('button', { name: /^Yes/ }).click();
    const startResult = page.locator('.control:has(button[data-command="start"]) .result');
    await startResult.getByText('Engine:').waitFor();
    await startResult.getByText(/Engine: (cranking|running)/).waitFor({ timeout: 15000 });
    await screen(page, 'unit-gen-running');
    const key = (k) => ({ slave: 1, function: 16, address: 4104, values: [k, 0xFFFF ^ k] });
    // The start in Stop mode was refused by the daemon before the bus: only manual, then start.
    assert.deepEqual(await writes(), [key(35702), key(35705)]);

    // CSRF: a same-origin request without the token is refused; a cross-site form post too.
    await ctl('reset_writes');
    const noToken = await page.evaluate(async () => {
      const r = await fetch('/api/v1/units/gen-1/commands/stop', { method: 'POST' });
      return { status: r.status, body: await r.json() };
    });
    assert.deepEqual([noToken.status, noToken.body.error], [403, 'csrf_failed']);
    const evil = await context.newPage();
    await evil.route('https://evil.example/**', (route) => route.fulfill({
      contentType: 'text/html',
      body: `<form method="post" action="${ORIGIN}/api/v1/units/gen-1/commands/stop">
        <button id="go">win a prize</button></form>`,
    }));
    await evil.goto('https://evil.example/');
    const [crossSite] = await Promise.all([
      evil.waitForResponse((r) => r.url().endsWith('/commands/stop')),
      evil.click('#go'),
    ]);
    assert.equal(crossSite.status(), 401, 'the SameSite=Strict cookie is not sent cross-site');
    await evil.close();
    assert.deepEqual(await writes(), []);

    // CSP: an injected inline script does not run.
    const injected = await page.evaluate(() => new Promise((resolve) => {
      document.addEventListener('securitypolicyviolation',
        (e) => resolve(e.effectiveDirective), { once: true });
      const s = document.createElement('script');
      s.textContent = 'window.__pwned = true';
      document.head.append(s);
      setTimeout(() => resolve('no violation'), 3000);
    }));
    assert.equal(injected, 'script-src-elem');
    assert.equal(await page.evaluate(() => window.__pwned), undefined);

    // Revocation while the page is open: the controls go within seconds.
    await page.goto(`${ORIGIN}/#/unit/hvac-1`);
    await sp.waitFor();
    const t0 = Date.now();
    await ctl('revoke', { grants: ['g-carl-hvac'] });
    await page.getByRole('heading', { level: 1, name: 'Unit not available' }).waitFor({ timeout: 5000 });
    metrics.revoke_to_screen_ms = Date.now() - t0;
    assert.equal(await sp.count(), 0);
    await screen(page, 'unit-revoked');
    await page.goto(`${ORIGIN}/#/`);
    await page.locator('li.card').first().waitFor();
    assert.equal(await page.locator('li.card').count(), 1);
    await context.close();
  }

  // --- Technician and admin: site and unit views with their controls; the technician's
  // diagnostics: link statistics and a raw register read (hvac-2's setpoint register, 240).
  for (const user of ['tess', 'ada']) {
    const { context, page } = await newPage(browser);
    await loginPassword(page, user);
    assert.equal(await page.locator('li.card').count(), 4);
    await screen(page, `site-${user}`);
    await page.goto(`${ORIGIN}/#/unit/hvac-2`);
    await page.locator('input[name="setpoint"]').waitFor();
    if (user === 'ada') {
      // Who has access, delegate, revoke, audit trail with a filter.
      await page.getByRole('link', { name: 'Access & audit' }).click();
      const grants = page.getByRole('table', { name: 'Access given on this box' });
      await grants.waitFor();
      // Every role in force, with its source (here all from the cloud's bundle; carl's hvac-1
      // grant was revoked by the bundle applied earlier, so it is not listed).
      await page.waitForFunction(() => document.querySelector('section[aria-labelledby="w-h"] .result').textContent.length > 0);
      assert.equal(await page.locator('section[aria-labelledby="w-h"] .result').textContent(), '4 roles in force.');
      const whoRows = [];
      for (const row of await page.getByRole('table', { name: 'Who has access' }).locator('tbody tr').all()) {
        const c = await row.locator('td').allTextContents();
        whoRows.push([c[0], c[1], c[2], c[4]].join(' | '));
      }
      assert.deepEqual(whoRows.sort(), [
        'ada@example.com | admin | whole site | cloud',
        'carl@example.com | control-only | unit gen-1 | cloud',
        'tess@example.com | technician | whole site | cloud',
        'vera@example.com | viewer | whole site | cloud',
      ]);
      // The daemon walked the audit chain: intact.
      await page.locator('#chain .badge.online').waitFor();
      assert.match(await page.locator('#chain .badge').textContent(), /^chain verified: \d+ records intact$/);
      await page.getByLabel('Email', { exact: true }).fill('vera@example.com');
      await page.getByLabel('Role', { exact: true }).selectOption('control-only');
      await page.getByLabel('Where', { exact: true }).selectOption('unit:hvac-2');
      // Without an end date the daemon refuses (ada's own access ends); its reason is shown.
      await page.getByRole('button', { name: 'Give access' }).click();
      await page.locator('section[aria-labelledby="g-h"] .result.bad').getByText('an expiry is required').waitFor();
      const d = new Date(Date.now() + 7 * 86400000);
      const pad = (n) => String(n).padStart(2, '0');
      await page.getByLabel('Until (empty: no end)').fill(`${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T12:00`);
      await page.getByRole('button', { name: 'Give access' }).click();
      await page.locator('section[aria-labelledby="g-h"] .result.ok').waitFor();
      const grantOut = page.locator('section[aria-labelledby="g-h"] .result');
      await page.waitForFunction(() => document.querySelector('section[aria-labelledby="g-h"] .result').textContent.length > 0);
      assert.equal(await grantOut.textContent(), 'vera@example.com now has control-only on unit hvac-2.');
      const neo = grants.getByRole('row', { name: /vera@example\.com/ });
      await neo.getByRole('cell', { name: 'local, by ada' }).waitFor();
      // "Who has access" is read again: vera's delegation is there with its source.
      await page.getByText('5 roles in force.').waitFor();
      const veraRoles = page.getByRole('table', { name: 'Who has access' }).getByRole('row', { name: /vera@example\.com/ });
      assert.deepEqual((await veraRoles.all()).length, 2);
      await veraRoles.filter({ hasText: 'local, by ada' }).getByRole('cell', { name: 'unit hvac-2' }).waitFor();
      await page.getByLabel('Kind', { exact: true }).fill('command');
      await page.getByRole('button', { name: 'Filter' }).click();
      // The unfiltered page already says "N entries shown.": wait for the filtered rows themselves.
      const kindCells = page.getByRole('table', { name: 'Audit entries, newest first' }).locator('tbody tr td:nth-child(3)');
      for (const until = Date.now() + 10000; ;) {
        const k = await kindCells.allTextContents();
        if (k.length > 0 && k.every((x) => x === 'command')) break;
        if (Date.now() > until) break;
        await page.waitForTimeout(100);
      }
      const kinds = await kindCells.allTextContents();
      assert.ok(kinds.length > 0);
      assert.deepEqual([...new Set(kinds)], ['command']);
      await screen(page, 'admin');
      await neo.getByRole('button', { name: /^Revoke control-only of vera@example\.com/ }).click();
      await page.getByText('Revoked control-only of vera@example.com.').waitFor();
      await page.getByText('4 roles in force.').waitFor();
      assert.equal(await grants.getByRole('row', { name: /vera@example\.com/ }).count(), 0);

      // "Who has access" a page at a time: 60 more people make 64 roles, 50 on the first page;
      // "More people" adds the other 14 in the daemon's order (by email), none twice.
      await ctl('crowd', { n: 60 });
      await page.reload();
      await page.getByText('50 roles shown; more follow.').waitFor();
      const who = page.getByRole('table', { name: 'Who has access' });
      const whoEmails = async () => (await who.locator('tbody tr td:first-child').allTextContents());
      assert.equal((await whoEmails()).length, 50);
      await page.getByRole('button', { name: 'More people' }).click();
      await page.getByText('64 roles in force.').waitFor();
      const everyone = await whoEmails();
      assert.deepEqual(everyone.slice(50), [
        ...Array.from({ length: 12 }, (_, i) => `crowd-${48 + i}@example.com`),
        'tess@example.com', 'vera@example.com',
      ]);
      assert.equal(new Set(everyone).size, 64, 'one role each, none twice');
      assert.equal(await page.getByRole('button', { name: 'More people' }).isHidden(), true);
      await screen(page, 'admin-roles-more');
      // The search: the daemon filters by a piece of the email or id, in any case.
      await page.getByLabel('Person (email or id)').fill('CROWD-5');
      await page.getByRole('button', { name: 'Search', exact: true }).click();
      await page.getByText('10 roles match.').waitFor();
      assert.deepEqual(await whoEmails(), Array.from({ length: 10 }, (_, i) => `crowd-5${i}@example.com`));
      await page.getByLabel('Person (email or id)').fill('');
      await page.getByRole('button', { name: 'Search', exact: true }).click();
      await page.getByText('50 roles shown; more follow.').waitFor();
      // By source: nothing was given here (the delegation above was revoked).
      await page.getByLabel('Source').selectOption('local');
      await page.getByText('0 roles match.').waitFor();
      assert.equal((await whoEmails()).length, 0);
      await page.getByLabel('Source').selectOption('');
      await page.getByText('50 roles shown; more follow.').waitFor();
      // By unit: the roles that reach hvac-1 are those on the whole site (vera, tess, ada and the
      // 60 new people); carl's role on gen-1 does not reach it (his hvac-1 role was revoked above).
      await page.getByLabel('Reaches unit').selectOption('hvac-1');
      await page.getByText('50 roles shown; more follow.').waitFor();
      await page.getByRole('button', { name: 'More people' }).click();
      await page.getByText('63 roles match.').waitFor();
      const wheres = await who.locator('tbody tr td:nth-child(3)').allTextContents();
      assert.equal(wheres.length, 63);
      assert.deepEqual([...new Set(wheres)], ['whole site']);
      assert.equal((await whoEmails()).includes('carl@example.com'), false);
      await page.getByLabel('Reaches unit').selectOption('gen-1');
      await page.getByRole('button', { name: 'More people' }).click();
      await page.getByText('64 roles match.').waitFor();
      assert.equal((await whoEmails()).filter((e) => e === 'carl@example.com').length, 1);
      await page.getByLabel('Reaches unit').selectOption('');
      await page.getByText('50 roles shown; more follow.').waitFor();

      // Lockouts: ten wrong passwords lock carl's account (the address is only delayed, 2 ms in
      // the test config); even the right password is then refused. The admin sees the lock and
      // clears it; afterwards carl signs in.
      const { context: other } = await newPage(browser);
      for (let i = 0; i < 10; i++) {
        const r = await other.request.post(`${ORIGIN}/web/session`, { data: { email: 'carl@example.com', password: 'wrong password' } });
        assert.equal(r.status(), 401, `wrong password ${i + 1}`);
        await new Promise((res) => setTimeout(res, 10)); // past the test config's 2 ms delay
      }
      const locked = await other.request.post(`${ORIGIN}/web/session`, { data: { email: 'carl@example.com', password: PASSWORD } });
      assert.equal(locked.status(), 429);
      assert.equal((await locked.json()).error, 'login_throttled');
      await page.reload();
      const locks = page.getByRole('table', { name: 'Sign-in lockouts' });
      await locks.getByRole('row', { name: /carl@example\.com/ }).waitFor();
      const t = await locks.locator('tbody tr td').allTextContents();
      assert.deepEqual([t.length, t[0], t[1], t[5]], [6, 'carl@example.com', '10', 'Clear'], 'the lockouts table');
      await screen(page, 'admin-lockouts');
      await page.getByRole('button', { name: 'Clear the lockout of carl@example.com' }).click();
      await page.getByText('Nobody is locked out or delayed.').waitFor();
      assert.equal(await locks.locator('tbody tr').count(), 0);
      const unlocked = await other.request.post(`${ORIGIN}/web/session`, { data: { email: 'carl@example.com', password: PASSWORD } });
      assert.equal(unlocked.status(), 201);
      await other.close();

      // The owner's switch for the service company: tess (technician, of acme) loses the site at
      // once and gets it back on restore.
      const firms = page.getByRole('table', { name: 'Service companies' });
      const acme = firms.getByRole('row', { name: /acme/ });
      await acme.getByRole('cell', { name: 'active' }).waitFor();
      assert.deepEqual(await acme.locator('td').allTextContents(), ['acme', 'tess', 'active', 'Suspend access'], 'the row of acme');
      const { context: tessCtx } = await newPage(browser);
      const tessLogin = await tessCtx.request.post(`${ORIGIN}/web/session`, { data: { email: 'tess@example.com', password: PASSWORD } });
      assert.equal(tessLogin.status(), 201);
      assert.equal((await tessCtx.request.get(`${ORIGIN}/api/v1/units/gen-1`)).status(), 200);
      page.once('dialog', (d) => d.accept());
      await page.getByRole('button', { name: 'Suspend access of acme' }).click();
      await page.getByText("acme's access is suspended.").waitFor();
      await acme.getByRole('button', { name: 'Restore access of acme' }).waitFor();
      assert.match(await acme.locator('td').nth(2).textContent(), /^suspended since /);
      assert.equal((await tessCtx.request.get(`${ORIGIN}/api/v1/units/gen-1`)).status(), 404);
      await screen(page, 'admin-owner');
      await page.getByRole('button', { name: 'Restore access of acme' }).click();
      await page.getByText('acme has its access back.').waitFor();
      await acme.getByRole('cell', { name: 'active' }).waitFor();
      assert.equal((await tessCtx.request.get(`${ORIGIN}/api/v1/units/gen-1`)).status(), 200);
      await tessCtx.close();

      // Access requests: a request tess sends shows up, pending, on the admin page.
      const { context: reqCtx } = await newPage(browser);
      assert.equal((await reqCtx.request.post(`${ORIGIN}/web/session`, { data: { email: 'carl@example.com', password: PASSWORD } })).status(), 201);
      const { csrf_token: reqCsrf } = await (await reqCtx.request.get(`${ORIGIN}/web/session`)).json();
      const asked = await reqCtx.request.post(`${ORIGIN}/api/v1/access-requests`, {
        headers: { 'X-CSRF-Token': reqCsrf },
        data: { role: 'technician', scope: { unit: 'hvac-1' }, message: 'filter alarm, need diagnostics' },
      });
      assert.equal(asked.status(), 202);
      await reqCtx.close();
      await page.reload();
      const requests = page.getByRole('table', { name: 'Access requests' });
      const carlReq = requests.getByRole('row', { name: /carl@example\.com|carl/ });
      await carlReq.waitFor();
      const c = await carlReq.locator('td').allTextContents();
      assert.deepEqual([c[0], c[1], c[2], c[3], c[5]],
        ['carl', 'technician', 'unit hvac-1', 'filter alarm, need diagnostics', 'pending (waiting for the cloud)'], 'the request of carl');
      await page.getByText('1 pending, 1 in all.').waitFor();
    }
    if (user === 'tess') {
      await ctl('reset_writes');
      await page.getByRole('button', { name: 'Load link statistics' }).click();
      await page.locator('dl[aria-label="Link statistics"]').getByText('Requests').waitFor();
      await page.getByLabel('Register kind', { exact: true }).selectOption('holding');
      await page.getByLabel('Address (0-based)', { exact: true }).fill('18');
      await page.getByLabel('Count', { exact: true }).fill('1');
      await page.getByRole('button', { name: 'Read', exact: true }).click();
      await page.getByText('Read 1 holding value(s) from 18.').waitFor();
      await page.getByRole('cell', { name: '0x00F0' }).waitFor();
      // The unit test reads every value now; the simulated indoor unit answers each one.
      await page.getByRole('button', { name: 'Test this unit' }).click();
      const verdict = page.locator('.unit-test-box .result');
      await verdict.filter({ hasText: /^(Passed|Not passed|Test failed)/ }).waitFor();
      const tested = await page.getByRole('table', { name: /^Unit test of hvac-2/ }).locator('tbody tr').count();
      assert.match(await verdict.textContent(), new RegExp(`^Passed: all ${tested} values read with good quality \\(\\d+ ms\\)\\.$`));
      assert.deepEqual(await writes(), []);
      await screen(page, 'unit-hvac-technician');
    }
    await context.close();
  }

  // --- Installer: signs in with the token file.
  {
    const { context, page } = await newPage(browser);
    await page.goto(`${ORIGIN}/`);
    await page.getByLabel('or choose the token file').setInputFiles(TOKEN_FILE);
    await page.waitForFunction(() => document.getElementById('token').value.length > 0);
    await page.getByRole('button', { name: 'Sign in with token' }).click();
    await page.locator('li.card').first().waitFor();
    assert.equal(await page.locator('li.card').count(), 4);
    await page.getByText('Ivo Installer').waitFor();

    // Scan ids 1–6 of the bus through the daemon: the four simulated devices, each with its
    // suggested profile and its configured unit; then a unit test of each; nothing is written.
    await ctl('reset_writes');
    await page.getByRole('link', { name: 'Scan' }).click();
    await page.locator('#s-link option[value="bus"]').waitFor({ state: 'attached' });
    await page.getByLabel('From slave id').fill('1');
    await page.getByLabel('To slave id').fill('6');
    await page.getByLabel('Wait for each id (ms)').fill('200');
    await page.getByRole('button', { name: 'Start scan' }).click();
    await page.getByText('Scan of link bus, ids 1–6 finished: 6 ids probed, 4 devices answered.').waitFor();
    const found = page.getByRole('table', { name: 'Devices found' }).locator('tbody tr');
    const rows = [];
    for (let i = 0; i < await found.count(); i++) {
      const c = await found.nth(i).locator('td').allTextContents();
      rows.push([c[0], c[2], c[3]]);
    }
    assert.deepEqual(rows, [
      ['1', 'dse-gencomm (by signature registers)', 'gen-1'],
      ['2', 'coolmaster-va (by register map fits (unconfirmed))', 'hvac-1'],
      ['3', 'coolmaster-va (by register map fits (unconfirmed))', 'hvac-2'],
      ['4', 'coolmaster-va (by register map fits (unconfirmed))', 'hvac-3'],
    ]);
    assert.equal(await page.locator('#s-progress').getAttribute('value'), '6');
    await screen(page, 'scan-results');
    const box = page.locator('.unit-test-box', { has: page.getByRole('heading', { name: 'Unit test of gen-1' }) });
    await box.getByRole('button', { name: 'Test this unit' }).click();
    await box.locator('.result').filter({ hasText: /^(Passed|Not passed|Test failed)/ }).waitFor();
    // The simulated controller does not implement the oil temperature (it reads the DSE
    // sentinel): the test names it, and the row is marked.
    assert.equal(await box.locator('.result').first().textContent(),
      'Not passed: 1 of 31 values not good (oil temperature: unimplemented).');
    assert.equal(await box.locator('tbody tr').count(), 31);
    assert.deepEqual(await box.locator('tbody tr.not-good td').allTextContents(), ['—', 'unimplemented']);
    await screen(page, 'scan-unit-test');
    assert.deepEqual(await writes(), []);
    // A scan of every id, cancelled: it stops after the id it is probing.
    await page.getByLabel('From slave id').fill('5');
    await page.getByLabel('To slave id').fill('247');
    await page.getByLabel('Wait for each id (ms)').fill('100');
    await page.getByRole('button', { name: 'Start scan' }).click();
    await page.getByText(/^Scanning link bus, ids 5–247: /).waitFor();
    await page.getByRole('button', { name: 'Cancel scan' }).click();
    await page.getByText(/^Scan of link bus, ids 5–247 cancelled after \d+ of 243 ids; 0 devices answered\.$/).waitFor();
    assert.deepEqual(await writes(), []);
    await context.close();
  }

  assert.deepEqual(seriousTotal, [], 'axe found serious or critical violations');
  fs.writeFileSync(path.join(OUT, 'metrics.json'), JSON.stringify({ ...metrics, axe: axeFindings.map((a) => ({ screen: a.screen, violations: a.violations.length })) }, null, 2));
  log('done', metrics);
} finally {
  await browser.close();
}
process.exit(0);
