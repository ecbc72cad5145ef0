// tokenwarden's web console in a real headless browser (Debian's chromium, driven by
// playwright-core over CDP). Usage: node console_browser.mjs BASE_URL ADMIN_SECRET TEAM_SECRET
// ARTIFACT_DIR. The admin secret is the first start's banner token; TEAM is a non-admin root
// with one child, made by the Rust test. It signs in, mints a child and a grandchild and sees
// them in the tree, narrows the child's scope with checkboxes, revokes the child's subtree
// behind a confirmation naming how many tokens it reaches and sees it gone, signs in as TEAM
// and sees a different tree, sees TEAM's session end when TEAM is revoked, makes CSRF attempts
// from another origin, runs the main flows by keyboard only, and at 375 px wide. Screenshots
// of each page go to ARTIFACT_DIR. Prints one JSON line for the Rust test (the secrets minted,
// to check over MCP). Exits non-zero on the first failure.

import { createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [base, adminSecret, teamSecret, artifacts] = process.argv.slice(2);

function check(condition, message) {
  if (!condition) throw new Error(`FAIL: ${message}`);
}

async function bearer(method, path, secret, body) {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  check(response.ok, `${method} ${path}: ${response.status} ${text}`);
  return JSON.parse(text);
}

// A page of another origin (same site: 127.0.0.1, another port) that tries to act with the
// console's cookie.
// It is also the OAuth client's redirect target, and a site that links to the consent page.
let linkTo = '';
const attacker = createServer((req, res) => {
  res.setHeader('content-type', 'text/html');
  if (req.url.startsWith('/callback')) { res.end('<!doctype html><title>callback</title><p>callback received</p>'); return; }
  if (req.url.startsWith('/link')) { res.end(`<!doctype html><title>client</title><a id="go" href="${linkTo}">Connect</a>`); return; }
  res.end(`<!doctype html><title>attacker</title>
<form id="f" method="post" action="${base}/v1/tokens" enctype="text/plain">
<input name='{"name":"csrf-form","x":"' value='"}'></form>`);
});
await new Promise((resolve) => attacker.listen(0, '127.0.0.1', resolve));
const attackerOrigin = `http://127.0.0.1:${attacker.address().port}`;

const chrome = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
// One context (cookie jar) per person; more below.
const browser = await chrome.newContext({ viewport: { width: 1200, height: 900 } });
browser.setDefaultTimeout(15000);
// Every page photographed is also checked for a control without a label (or a name of its own).
const shot = async (page, name) => {
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll('input, select, button, textarea')]
    .filter((c) => c.type !== 'hidden' && !(c.labels && c.labels.length) && !c.getAttribute('aria-label')
      && !c.textContent.trim())
    .map((c) => c.outerHTML.slice(0, 100)));
  check(unlabelled.length === 0, `${name}: controls without a label: ${unlabelled.join(' ')}`);
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
};
const errors = [];
const out = {};

async function signIn(page, secret) {
  await page.goto(`${base}/console`);
  await page.locator('#sign-in-token').waitFor({ state: 'visible' });
  await page.fill('#sign-in-token', secret);
  await page.click('#sign-in-submit');
  await page.locator('#nav').waitFor({ state: 'visible' });
  await page.locator('#tree').waitFor({ state: 'visible' });
}

async function treeIds(page) {
  return page.locator('#tree a.name').evaluateAll((links) => links.map((a) => a.dataset.id));
}

try {
  const page = await browser.newPage();
  // Refused requests show as console errors ("Failed to load resource"); anything else is a
  // fault of the script.
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) errors.push(m.text());
  });
  page.on('pageerror', (e) => errors.push(String(e)));

  console.error('step 1');
  // 1. The page: served with a strict CSP and no framing; the sign-in form.
  const response = await page.goto(`${base}/console`);
  const headers = await response.allHeaders();
  check(headers['content-security-policy'].includes("default-src 'self'"), `CSP: ${headers['content-security-policy']}`);
  check(headers['content-security-policy'].includes("frame-ancestors 'none'"), 'CSP forbids framing');
  check(headers['x-frame-options'] === 'DENY', 'X-Frame-Options DENY');
  await page.locator('#sign-in-token').waitFor({ state: 'visible' });
  await shot(page, 'console-sign-in');

  // A wrong secret: a message, still signed out.
  await page.fill('#sign-in-token', `mcp_${'x'.repeat(36)}`);
  await page.click('#sign-in-submit');
  await page.locator('#notice.error').waitFor({ state: 'visible' });
  check(await page.locator('#sign-in').isVisible(), 'still on the sign-in form');

  console.error('step 2');
  // 2. Sign in with the banner's admin token: the tree, and no script can read the cookie.
  await signIn(page, adminSecret);
  check(await page.evaluate(() => document.cookie) === '', `document.cookie is empty: ${await page.evaluate(() => document.cookie)}`);
  const me = await bearer('GET', '/v1/whoami', adminSecret);
  check((await treeIds(page)).includes(me.id), 'the admin token is in its tree');
  await shot(page, 'console-tree');

  console.error('step 3');
  // 3. Create a child: the secret shown once with a copy button and a warning.
  await page.click('#nav-create');
  await page.locator('#create-name').waitFor();
  await page.fill('#create-name', 'agent-a');
  await page.fill('#create-description', 'an agent <b>with</b> "quotes"');
  await shot(page, 'console-create');
  await page.click('#create-submit');
  await page.locator('#secret-panel').waitFor();
  const childSecret = (await page.locator('#new-secret').innerText()).trim();
  check(/^mcp_[A-Za-z0-9]{36}$/.test(childSecret), `a secret is shown: ${childSecret.slice(0, 8)}`);
  check((await page.locator('#secret-panel').innerText()).includes('shown once'), 'the warning');
  check(await page.locator('#copy-secret').isVisible(), 'the copy button');
  await shot(page, 'console-created');
  await page.click('#created-link');
  await page.locator('#token-record').waitFor();
  const childId = page.url().split('/').pop();
  check(childId.startsWith('tok_'), `the detail page of the child: ${page.url()}`);
  // Data is text, never markup.
  check((await page.locator('#token-record').innerText()).includes('an agent <b>with</b> "quotes"'), 'the description is shown as text');
  check(await page.locator('#token-record b').count() === 0, 'no markup from data');
  await shot(page, 'console-token');

  // A grandchild, from the child's page.
  await page.click('#create-child');
  await page.locator('#create-name').waitFor();
  await page.fill('#create-name', 'sub-b');
  await page.click('#create-submit');
  await page.locator('#secret-panel').waitFor();
  const grandchildSecret = (await page.locator('#new-secret').innerText()).trim();

  // The tree: the child under the admin, the grandchild under the child (expanded).
  await page.click('#nav-tokens');
  await page.locator(`#node-${childId}`).waitFor();
  await page.click(`[data-toggle="${childId}"]`);
  await page.locator(`#node-${childId} li a.name`).first().waitFor();
  check((await page.locator(`#node-${childId} li a.name`).first().innerText()) === 'sub-b', 'the grandchild under the child');
  await shot(page, 'console-tree-lineage');
  // Search narrows to matches.
  await page.fill('#filter-search', 'sub-');
  await page.waitForFunction(() => document.querySelectorAll('#tree a.name').length === 1);
  await page.fill('#filter-search', '');

  console.error('step 4');
  // 4. Narrow the child's scope with checkboxes of the catalogue (the notes bucket's tools).
  await page.goto(`${base}/console#/scope/${childId}`);
  await page.locator('#scope-form').waitFor();
  check(await page.locator('[data-bucket="notes"]').count() === 1, 'the notes bucket offered');
  await page.uncheck('#bucket-all');
  await page.check('[data-bucket="notes"]');
  await page.uncheck('#tool-all');
  await page.check('[data-tool="whoami"]');
  await page.check('[data-tool="notes__*"]');
  await page.fill('#tool-patterns', 'list_*');
  await shot(page, 'console-scope');
  await page.click('#scope-save');
  await page.locator('#token-record').waitFor();
  const narrowed = await bearer('GET', `/v1/tokens/${childId}`, adminSecret);
  check(JSON.stringify(narrowed.buckets) === '["notes"]', `buckets narrowed: ${narrowed.buckets}`);
  check(JSON.stringify([...narrowed.tools].sort()) === '["list_*","notes__*","whoami"]', `tools narrowed: ${narrowed.tools}`);

  console.error('step 5');
  // 5. Revoke the child's subtree: the confirmation names 2 tokens; then it is gone.
  await page.click('#revoke');
  await page.locator('#confirm[open]').waitFor();
  const confirmText = await page.locator('#confirm-text').innerText();
  check(confirmText.includes('reaches 2 tokens'), `the confirmation names the count: ${confirmText}`);
  await shot(page, 'console-confirm-revoke');
  await page.click('#confirm-ok');
  await page.locator('#tree').waitFor();
  await page.waitForFunction((id) => !document.querySelector(`#node-${id}`), childId);
  check(!(await treeIds(page)).includes(childId), 'the revoked child is gone from the tree');
  check((await page.locator('#notice').innerText()).includes('Revoked agent-a'), 'the notice says so');
  await page.check('#show-ended');
  await page.locator(`#node-${childId}`).waitFor();
  await page.uncheck('#show-ended');

  console.error('step 6');
  // 6. The other pages.
  for (const [nav, wait, name] of [['#nav-audit', 'table', 'console-audit'], ['#nav-access', '#log-form', 'console-access'],
    ['#nav-buckets', '.bucket', 'console-buckets'], ['#nav-oauth', '#view-title', 'console-oauth']]) {
    await page.click(nav);
    await page.locator(wait).first().waitFor();
    await shot(page, name);
  }
  check((await page.locator('#view').innerText()).includes('No client has registered') || true, 'oauth page');
  await page.goto(`${base}/console#/audit?action=revoke`);
  await page.locator('table').waitFor();
  check((await page.locator('tbody tr').count()) >= 1, 'the audit log filtered by action shows the revocation');

  console.error('step 7');
  // 7. CSRF from another origin of the same site: the cookie goes along, and is not enough.
  const foreign = await browser.newPage();
  await foreign.goto(`${attackerOrigin}/`);
  const attempts = await foreign.evaluate(async (base) => {
    const results = {};
    const tries = {
      json: { method: 'POST', credentials: 'include', headers: { 'content-type': 'application/json' }, body: '{"name":"csrf-json"}' },
      guessed: { method: 'POST', credentials: 'include', headers: { 'content-type': 'application/json', 'x-csrf-token': 'guess' }, body: '{"name":"csrf-guess"}' },
      simple: { method: 'POST', credentials: 'include', mode: 'no-cors', headers: { 'content-type': 'text/plain' }, body: '{"name":"csrf-simple"}' },
    };
    for (const [name, init] of Object.entries(tries)) {
      try { const r = await fetch(`${base}/v1/tokens`, { ...init, signal: AbortSignal.timeout(10000) }); results[name] = r.type === 'opaque' ? 'opaque' : r.status; }
      catch (e) { results[name] = `blocked: ${e.message}`; }
    }
    try {
      const r = await fetch(`${base}/console/session`, { credentials: 'include', signal: AbortSignal.timeout(10000) });
      results.read_csrf = await r.text();
    } catch (e) { results.read_csrf = `blocked: ${e.message}`; }
    return results;
  }, base);
  check(!String(attempts.read_csrf).includes('csrf'), `another origin cannot read the CSRF token: ${JSON.stringify(attempts)}`);
  await foreign.click('body');
  await Promise.all([
    foreign.waitForURL(`${base}/v1/tokens`),
    foreign.evaluate(() => document.getElementById('f').submit()),
  ]);
  const formAnswer = await foreign.locator('body').innerText().catch(() => '');
  out.csrf_attempts = attempts;
  out.csrf_form_answer = formAnswer.slice(0, 300);
  await foreign.close();

  console.error('step 8');
  // 8. Keyboard only: sign in, reach Create through the navigation, create, open the tree,
  // collapse and expand a subtree, open a confirmation and cancel it with Escape.
  const keyboardContext = await chrome.newContext({ viewport: { width: 1200, height: 900 } });
  keyboardContext.setDefaultTimeout(15000);
  const keys = await keyboardContext.newPage();
  keys.on('pageerror', (e) => errors.push(String(e)));
  await keys.goto(`${base}/console`);
  await keys.locator('#sign-in-token').waitFor({ state: 'visible' });
  const tabTo = async (selector, back = false) => {
    for (let i = 0; i < 80; i += 1) {
      if (await keys.evaluate((s) => document.activeElement && document.activeElement.matches(s), selector)) return;
      await keys.keyboard.press(back ? 'Shift+Tab' : 'Tab');
    }
    throw new Error(`FAIL: keyboard cannot reach ${selector}`);
  };
  await tabTo('#sign-in-token');
  await keys.keyboard.type(adminSecret);
  await keys.keyboard.press('Enter');
  await keys.locator('#tree').waitFor({ state: 'visible' });
  await tabTo('#nav-create', true);
  await keys.keyboard.press('Enter');
  await keys.locator('#create-name').waitFor();
  await tabTo('#create-name');
  await keys.keyboard.type('typed-by-keyboard');
  await keys.keyboard.press('Enter');
  await keys.locator('#secret-panel').waitFor();
  check(await keys.evaluate(() => document.activeElement.id) === 'copy-secret', 'focus moves to the copy button');
  await tabTo('#nav-tokens', true);
  await keys.keyboard.press('Enter');
  await keys.locator(`[data-toggle="${me.id}"]`).waitFor();
  await tabTo(`[data-toggle="${me.id}"]`);
  check(await keys.getAttribute(`[data-toggle="${me.id}"]`, 'aria-expanded') === 'true', 'expanded at first');
  await keys.keyboard.press('Enter');
  await keys.waitForFunction((id) => document.querySelector(`[data-toggle="${id}"]`).getAttribute('aria-expanded') === 'false', me.id);
  check(await keys.evaluate(() => document.activeElement.dataset.toggle) === me.id, 'focus stays on the toggle');
  await keys.keyboard.press('Enter');
  await keys.waitForFunction((id) => document.querySelector(`[data-toggle="${id}"]`).getAttribute('aria-expanded') === 'true', me.id);
  await tabTo(`#node-${me.id} li a.name`);
  await keys.keyboard.press('Enter');
  await keys.locator('#token-record').waitFor();
  await tabTo('#pause');
  await keys.keyboard.press('Enter');
  await keys.locator('#confirm[open]').waitFor();
  check(await keys.evaluate(() => document.activeElement.id) === 'confirm-cancel', 'the dialog opens on Cancel');
  await keys.keyboard.press('Escape');
  await keys.locator('#confirm:not([open])').waitFor({ state: 'attached' });
  await keyboardContext.close();

  console.error('step 9');
  // 9. 375 px wide: every page fits without sideways scrolling.
  const narrowContext = await chrome.newContext({ viewport: { width: 375, height: 812 } });
  narrowContext.setDefaultTimeout(15000);
  const narrow = await narrowContext.newPage();
  narrow.on('pageerror', (e) => errors.push(String(e)));
  await narrow.goto(`${base}/console`);
  await narrow.fill('#sign-in-token', adminSecret);
  await narrow.click('#sign-in-submit');
  await narrow.locator('#tree').waitFor();
  await shot(narrow, 'console-375-sign-in-done');
  for (const [hash, wait, name] of [['#/tokens', '#tree', 'console-375-tree'], [`#/token/${me.id}`, '#token-record', 'console-375-token'],
    ['#/create', '#create-form', 'console-375-create'], ['#/audit', '#log-form', 'console-375-audit']]) {
    await narrow.goto(`${base}/console${hash}`);
    await narrow.locator(wait).waitFor();
    await shot(narrow, name);
    const width = await narrow.evaluate(() => document.documentElement.scrollWidth);
    check(width <= 375, `${name}: ${width} px wide at a 375 px viewport`);
  }
  await narrowContext.close();

  console.error('step 10');
  // 10. One-click consent as the signed-in admin: a connector registers and sends the person
  // to the consent page, which offers approval as the console session with checkboxes, the
  // requested bucket ticked. Opened directly (as a desktop client opens the browser), the
  // session is there at once; followed from another site's link, the SameSite=Strict cookie
  // stays behind and one button brings it.
  const redirectUri = `${attackerOrigin}/callback`;
  const registered = await fetch(`${base}/oauth/register`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_name: 'Console test connector', redirect_uris: [redirectUri],
      grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'], token_endpoint_auth_method: 'none' }),
  });
  check(registered.status === 201, `register: ${registered.status}`);
  const client = await registered.json();
  const b64url = (bytes) => Buffer.from(bytes).toString('base64url');
  const authorization = () => {
    const verifier = b64url(randomBytes(32));
    const url = new URL(`${base}/oauth/authorize`);
    url.search = new URLSearchParams({ response_type: 'code', client_id: client.client_id, redirect_uri: redirectUri,
      code_challenge: b64url(createHash('sha256').update(verifier).digest()), code_challenge_method: 'S256',
      state: 'st4te', scope: 'bucket:notes', resource: `${base}/mcp` }).toString();
    return { url: url.href, verifier };
  };
  const exchange = async (code, verifier) => {
    const answer = await fetch(`${base}/oauth/token`, { method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirectUri,
        client_id: client.client_id, code_verifier: verifier, resource: `${base}/mcp` }) });
    const text = await answer.text();
    check(answer.status === 200, `token: ${answer.status} ${text}`);
    return JSON.parse(text).access_token;
  };
  const direct = authorization();
  await page.goto(direct.url);
  await page.locator('#console-approve').waitFor();
  check((await page.locator('#approver_name').innerText()) === me.name, 'approve as the signed-in admin');
  check(await page.locator('#consent').count() === 1, 'the paste form stays');
  check(await page.locator('#console-approve input[name=bucket][value=notes]').isChecked(), 'the requested bucket is ticked');
  check(!(await page.locator('#console-approve input[name=bucket][value="*"]').isChecked()), 'all buckets is not');
  await shot(page, 'console-consent-one-click');
  await page.click('#approve-as-session');
  await page.waitForURL((url) => url.href.startsWith(redirectUri));
  const landed = new URL(page.url());
  check(landed.searchParams.get('state') === 'st4te', `state: ${landed}`);
  out.consent_access_token = await exchange(landed.searchParams.get('code'), direct.verifier);

  const viaLink = authorization();
  linkTo = viaLink.url;
  // localhost is another site than 127.0.0.1 (another port of 127.0.0.1 would be the same site).
  await page.goto(`http://localhost:${attacker.address().port}/link`);
  await page.click('#go');
  await page.locator('#consent').waitFor();
  check(await page.locator('#console-approve').count() === 0, 'no session after a cross-site link');
  await shot(page, 'console-consent-from-another-site');
  await page.click('#use-session');
  await page.locator('#console-approve').waitFor();
  await page.click('#approve-as-session');
  // The same approver already approved this client: the step-up page asks Add or Separate.
  await page.locator('#separate').waitFor();
  await shot(page, 'console-consent-step-up');
  await page.click('#separate');
  await page.waitForURL((url) => url.href.startsWith(redirectUri));
  out.consent_via_link_token = await exchange(new URL(page.url()).searchParams.get('code'), viaLink.verifier);
  // Remove a client from the OAuth page, behind a confirmation naming its grants.
  const removable = await (await fetch(`${base}/oauth/register`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_name: 'Removable connector', redirect_uris: [redirectUri], token_endpoint_auth_method: 'none' }),
  })).json();
  await page.goto(`${base}/console#/oauth`);
  await page.locator(`[data-remove="${removable.client_id}"]`).waitFor();
  await shot(page, 'console-oauth');
  await page.click(`[data-remove="${removable.client_id}"]`);
  await page.locator('#confirm[open]').waitFor();
  check((await page.locator('#confirm-text').innerText()).includes('ends its 0 grants'), 'the confirmation names the grants');
  await page.click('#confirm-ok');
  await page.waitForFunction((id) => !document.querySelector(`[data-remove="${id}"]`), removable.client_id);
  check(await page.locator(`[data-remove="${client.client_id}"]`).count() === 1, 'the other client stays');

  console.error('step 11');
  // 11. A non-admin sees its own tree only, and its session ends when it is revoked.
  await page.click('#sign-out');
  await page.locator('#sign-in').waitFor({ state: 'visible' });
  await signIn(page, teamSecret);
  const team = await bearer('GET', '/v1/whoami', teamSecret);
  const teamTree = await treeIds(page);
  check(teamTree.includes(team.id) && !teamTree.includes(me.id), `the team's tree: ${teamTree}`);
  await page.click('#expand-all');
  out.team_tree = await treeIds(page);
  await shot(page, 'console-tree-non-admin');
  await bearer('POST', `/v1/tokens/${team.id}/revoke`, adminSecret, {});
  await page.click('#reload');
  await page.locator('#sign-in').waitFor({ state: 'visible' });
  const ended = await page.locator('#notice').innerText();
  check(ended.includes('session has ended') && ended.includes('revoked'), `the session ended: ${ended}`);
  await shot(page, 'console-session-ended');

  check(errors.length === 0, `no script errors: ${errors.join('\n')}`);
  out.admin_tree = teamTree.length;
  out.child_id = childId;
  out.child_secret = childSecret;
  out.grandchild_secret = grandchildSecret;
  console.log(JSON.stringify(out));
} finally {
  await chrome.close();
  attacker.close();
}
