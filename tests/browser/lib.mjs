// Shared helpers of the browser tests: launching the system Chromium,
// registering users in fresh browser contexts, and checks that fail with a
// message. Each test script is run as `node <script> <server url> <data dir>`
// by tests/browser.rs, and exits with status 0 only when every check passed.

import { readFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const [baseUrl, dataDir] = process.argv.slice(2);
if (!baseUrl || !dataDir) {
  console.error('usage: node <script>.mjs <server url> <data dir>');
  process.exit(2);
}

// How long a check waits for the page before it fails.
export const TIMEOUT_MS = 15_000;
export const PASSWORD = 'correct horse battery';
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

// When set, scripts save screenshots of the views they reach to this folder.
export const screenshotDir = process.env.AURA_SCREENSHOT_DIR || null;

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-quic', '--no-first-run',
];

export function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

export function setupCode() {
  return readFileSync(join(dataDir, 'setup-code'), 'utf8').trim();
}

// Console errors and uncaught exceptions of every page, checked at the end.
// Failed connections while a test stops the server are expected and left out.
// So is the 401 of /api/me, which is how the page learns it must log in.
const pageErrors = [];
const expectedErrors = [/ERR_CONNECTION_REFUSED/, /WebSocket connection to .* failed/, /ERR_CONNECTION_RESET/, /ERR_EMPTY_RESPONSE/];

// Lets a script accept console errors that it provokes on purpose.
export function expectConsoleError(pattern) {
  expectedErrors.push(pattern);
}

export function watchPage(page, label) {
  page.on('console', (message) => {
    if (message.type() !== 'error') return;
    const text = message.text();
    if (expectedErrors.some((pattern) => pattern.test(text))) return;
    if (/status of 401/.test(text) && message.location().url.endsWith('/api/me')) return;
    pageErrors.push(`${label}: console error: ${text}`);
  });
  page.on('pageerror', (error) => pageErrors.push(`${label}: uncaught: ${error.message}`));
  page.on('dialog', (dialog) => {
    pageErrors.push(`${label}: unexpected ${dialog.type()} dialog: ${dialog.message()}`);
    dialog.dismiss().catch(() => {});
  });
}

export async function launch() {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
}

// Opens the page in a new context, registers `name` (admin with the setup
// code) and waits until the live connection is up.
export async function registerUser(browser, name, { admin = false, viewport = { width: 1100, height: 720 } } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  watchPage(page, name);
  await page.goto(`${baseUrl}/`);
  await page.click('#show-register');
  await page.fill('#register-form input[name=username]', name);
  await page.fill('#register-form input[name=password]', PASSWORD);
  if (admin) await page.fill('#register-form input[name=setup_code]', setupCode());
  await page.click('#register-form button[type=submit]');
  await waitLive(page);
  return { context, page };
}

export async function waitLive(page) {
  await page.waitForSelector('#chat-view:not([hidden])', { timeout: TIMEOUT_MS });
  await page.waitForSelector('#connection-status[data-state=live]', { timeout: TIMEOUT_MS });
}

export async function sendMessage(page, text) {
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
}

// The text of every message in the view, oldest first, without the edited mark.
export function messageTexts(page) {
  return page.$$eval('#message-list .message .message-content', (elements) => elements.map((element) => {
    const copy = element.cloneNode(true);
    copy.querySelector('.edited')?.remove();
    return copy.textContent.trim();
  }));
}

// Waits until a message with exactly this text is in the view and sent.
export async function waitForMessage(page, text) {
  await page.waitForFunction((wanted) => [...document.querySelectorAll('#message-list .message:not(.pending) .message-content')]
    .some((element) => element.firstChild?.textContent === wanted || element.textContent === wanted), text, { timeout: TIMEOUT_MS });
}

export async function selectChannel(page, name) {
  await page.click(`#channel-tree .channel-link:has(.channel-link-name:text-is("# ${name}"))`);
  await page.waitForFunction((wanted) => document.querySelector('#channel-name')?.textContent === wanted, `# ${name}`, { timeout: TIMEOUT_MS });
}

export async function screenshot(page, name) {
  if (!screenshotDir) return;
  mkdirSync(screenshotDir, { recursive: true });
  await page.screenshot({ path: join(screenshotDir, `${name}.png`) });
  console.log(`saved screenshot ${name}.png`);
}

// Runs a test body with a browser, reports the outcome and sets the exit status.
export async function run(name, body) {
  const browser = await launch();
  let failed = false;
  try {
    await body(browser);
    if (pageErrors.length > 0) throw new Error(`the pages reported errors:\n${pageErrors.join('\n')}`);
    console.log(`${name}: passed`);
  } catch (error) {
    failed = true;
    console.error(`${name}: ${error.stack ?? error}`);
  } finally {
    await browser.close().catch(() => {});
  }
  process.exit(failed ? 1 : 0);
}

// Asks tests/browser.rs to act on the server ('stop-server' or
// 'start-server') and waits for its answer on standard input.
let inputLines = null;
export async function control(action) {
  if (!inputLines) {
    const { createInterface } = await import('node:readline');
    inputLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  }
  console.log(`@@${action}`);
  const answer = await inputLines.next();
  check(!answer.done && answer.value === 'ok', `the test answers ${action} with ok`);
}

// Calls the HTTP API from a page, with its session cookie and Origin.
export function apiFromPage(page, method, path, body) {
  return page.evaluate(async ({ method, path, body }) => {
    const response = await fetch(path, {
      method,
      headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: response.status, body: await response.json().catch(() => null) };
  }, { method, path, body });
}

// Channel names in sidebar order.
export function sidebarChannels(page) {
  return page.$$eval('#channel-tree .channel-link-name', (elements) => elements.map((element) => element.textContent.replace(/^# /, '')));
}
