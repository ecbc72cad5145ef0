// tokenwarden's OAuth consent page in a real headless browser (Debian's chromium, driven by
// playwright-core over CDP). Usage: node oauth_consent_browser.mjs BASE_URL APPROVER_SECRET
// ARTIFACT_DIR. It registers a client whose redirect URI is a loopback listener of its own,
// opens the authorization URL, tries a wrong approver (#error), approves with the right one,
// lands on the redirect with a code and the state it sent, checks that the page refuses to be
// framed, exchanges the code, and prints one JSON line {access_token, client_id} for the Rust
// test to check. Screenshots go to ARTIFACT_DIR. Exits non-zero on the first failure.

import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [base, approver, artifacts] = process.argv.slice(2);
const CLIENT_NAME = 'Browser test connector';

function check(condition, message) {
  if (!condition) throw new Error(`FAIL: ${message}`);
}

const b64url = (bytes) => Buffer.from(bytes).toString('base64url');

// The redirect target, and a page of another origin that tries to frame the consent page.
let framedUrl = '';
const listener = createServer((req, res) => {
  res.setHeader('content-type', 'text/html');
  if (req.url.startsWith('/frame')) {
    res.end(`<!doctype html><title>framing</title><iframe id="f" src="${framedUrl}"></iframe>`);
  } else {
    res.end('<!doctype html><title>callback</title><p>callback received</p>');
  }
});
await new Promise((resolve) => listener.listen(0, '127.0.0.1', resolve));
const origin = `http://127.0.0.1:${listener.address().port}`;
const redirectUri = `${origin}/callback`;

const registered = await fetch(`${base}/oauth/register`, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({
    client_name: CLIENT_NAME,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'none',
  }),
});
const registration = await registered.text();
check(registered.status === 201, `register: ${registered.status} ${registration}`);
const client = JSON.parse(registration);

function authorizationUrl() {
  const verifier = b64url(randomBytes(32));
  const state = b64url(randomBytes(16));
  const url = new URL(`${base}/oauth/authorize`);
  url.search = new URLSearchParams({
    response_type: 'code',
    client_id: client.client_id,
    redirect_uri: redirectUri,
    code_challenge: b64url(createHash('sha256').update(verifier).digest()),
    code_challenge_method: 'S256',
    state,
    scope: 'bucket:docs read_only',
    resource: `${base}/mcp`,
  }).toString();
  return { url: url.href, verifier, state };
}

const profile = mkdtempSync(join(tmpdir(), 'tw-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  viewport: { width: 900, height: 900 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
browser.setDefaultTimeout(15000);
try {
  const request = authorizationUrl();
  const page = await browser.newPage();
  const response = await page.goto(request.url);
  check(response.status() === 200, `consent page: ${response.status()}`);
  const csp = (await response.allHeaders())['content-security-policy'] ?? '';
  check(csp.includes("frame-ancestors 'none'"), `CSP forbids framing: ${csp}`);
  const text = await page.locator('body').innerText();
  check(text.includes(CLIENT_NAME), 'the page names the client');
  check(text.includes('127.0.0.1'), 'the page names the redirect host');
  check(await page.locator('#read_only').isChecked(), 'read_only prefilled from the scope');
  check((await page.locator('#buckets').inputValue()).split(/\s+/).includes('docs'), 'bucket:docs prefilled');
  await page.screenshot({ path: join(artifacts, 'oauth-consent.png'), fullPage: true });

  // A wrong approver: the page comes back with a message, and stays usable.
  await page.fill('#approver_token', 'mcp_' + 'x'.repeat(36));
  await page.click('#approve');
  await page.locator('#error').waitFor({ state: 'visible' });
  const wrong = (await page.locator('#error').innerText()).trim();
  check(wrong.length > 0, '#error says something');
  check(page.url().startsWith(`${base}/oauth/authorize`), `still on the consent page: ${page.url()}`);
  await page.screenshot({ path: join(artifacts, 'oauth-consent-error.png'), fullPage: true });

  // The right approver: the browser lands on the redirect URI with a code and our state.
  await page.fill('#approver_token', approver);
  await page.click('#approve');
  await page.waitForURL((url) => url.href.startsWith(redirectUri));
  const landed = new URL(page.url());
  check(landed.searchParams.get('state') === request.state, `state comes back: ${landed}`);
  const code = landed.searchParams.get('code');
  check(code && !landed.searchParams.has('error'), `a code: ${landed}`);
  check((await page.locator('body').innerText()).includes('callback received'), 'the redirect target rendered');

  // Framed by another origin, the consent page does not render.
  framedUrl = authorizationUrl().url;
  const framing = await browser.newPage();
  const refusals = [];
  framing.on('console', (message) => refusals.push(message.text()));
  await framing.goto(`${origin}/frame`, { waitUntil: 'load' });
  const frame = framing.frames().find((f) => f !== framing.mainFrame());
  check(frame, 'the framing page has its frame');
  const rendered = await frame.evaluate(() => document.querySelector('#consent') !== null).catch(() => false);
  check(!rendered, 'the consent form does not render inside a frame');
  console.error(`framing refused: ${refusals.find((m) => m.includes('frame-ancestors')) ?? '(no console message)'}`);

  const exchanged = await fetch(`${base}/oauth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'authorization_code',
      code,
      redirect_uri: redirectUri,
      client_id: client.client_id,
      code_verifier: request.verifier,
      resource: `${base}/mcp`,
    }),
  });
  const tokenText = await exchanged.text();
  check(exchanged.status === 200, `token: ${exchanged.status} ${tokenText}`);
  const token = JSON.parse(tokenText);
  console.error(`wrong approver reads: ${wrong}`);
  console.log(JSON.stringify({ access_token: token.access_token, client_id: client.client_id }));
} finally {
  await browser.close();
  listener.close();
  rmSync(profile, { recursive: true, force: true });
}
