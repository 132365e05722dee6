// At 360 px wide the page never scrolls sideways: not on the login screen,
// not with long words, addresses and names in the chat, and not with the
// channel drawer open. The drawer opens from the Channels button, closes on
// a channel choice and on Escape.

import {
  run, registerUser, sendMessage, waitForMessage, check, apiFromPage, baseUrl, watchPage,
  TIMEOUT_MS, screenshot,
} from './lib.mjs';

const NARROW = { width: 360, height: 740 };

async function horizontalOverflow(page) {
  return page.evaluate(() => {
    const root = document.documentElement;
    return {
      page: root.scrollWidth - root.clientWidth,
      body: document.body.scrollWidth - document.body.clientWidth,
    };
  });
}

async function checkNoOverflow(page, where) {
  const overflow = await horizontalOverflow(page);
  check(overflow.page <= 0 && overflow.body <= 0, `no horizontal scroll ${where}: ${JSON.stringify(overflow)}`);
}

await run('narrow', async (browser) => {
  const context = await browser.newContext({ viewport: NARROW });
  const login = await context.newPage();
  watchPage(login, 'login');
  await login.goto(`${baseUrl}/`);
  await login.waitForSelector('#auth-view:not([hidden])', { timeout: TIMEOUT_MS });
  await checkNoOverflow(login, 'on the login screen');
  await login.click('#show-register');
  await checkNoOverflow(login, 'on the registration screen');
  await context.close();

  const { page: admin } = await registerUser(browser, 'admin', { admin: true });
  const { page: bob } = await registerUser(browser, 'bob_with_a_long_name_0123456789', { viewport: NARROW });

  const longName = 'a-channel-name-that-is-exactly-sixty-four-characters-long-000000';
  const layout = await apiFromPage(admin, 'GET', '/api/layout');
  const created = await apiFromPage(admin, 'POST', '/api/channels', {
    category: layout.body.categories[0].id,
    name: longName,
    topic: 'A topic that is long enough to wrap on a narrow screen, with a long word: Donaudampfschifffahrtsgesellschaftskapitän',
  });
  check(created.status === 201, `creating a channel returns 201: ${created.status}`);

  const longWord = 'x'.repeat(300);
  const longUrl = `https://example.com/${'path/'.repeat(40)}end`;
  await sendMessage(admin, longWord);
  await sendMessage(admin, `See ${longUrl} for details`);
  await waitForMessage(bob, `See ${longUrl} for details`);
  await sendMessage(bob, 'Reading on a phone. Everything fits.');
  await waitForMessage(bob, 'Reading on a phone. Everything fits.');
  await checkNoOverflow(bob, 'in the chat with a long word and address');

  // The sidebar is a drawer: closed at first, opened by the button.
  const closed = await bob.evaluate(() => getComputedStyle(document.querySelector('#sidebar')).visibility);
  check(closed === 'hidden', `the drawer starts closed: ${closed}`);
  await bob.click('#sidebar-toggle');
  await bob.waitForFunction(() => getComputedStyle(document.querySelector('#sidebar')).visibility === 'visible', null, { timeout: TIMEOUT_MS });
  await bob.waitForTimeout(250); // the slide-in transition
  await checkNoOverflow(bob, 'with the drawer open');
  await screenshot(bob, 'narrow-drawer');

  // Escape closes it and returns focus to the button.
  await bob.keyboard.press('Escape');
  await bob.waitForFunction(() => !document.querySelector('#sidebar').classList.contains('open'), null, { timeout: TIMEOUT_MS });
  const focused = await bob.evaluate(() => document.activeElement?.id);
  check(focused === 'sidebar-toggle', `Escape returns focus to the Channels button: ${focused}`);

  // Choosing a channel closes the drawer and shows the channel.
  await bob.click('#sidebar-toggle');
  await bob.click(`#channel-tree .channel-link:has-text("${longName}")`);
  await bob.waitForFunction(() => !document.querySelector('#sidebar').classList.contains('open'), null, { timeout: TIMEOUT_MS });
  // The header is rendered in the next animation frame, which may come after the drawer closed.
  await bob.waitForFunction((wanted) => document.querySelector('#channel-name')?.textContent === wanted, `# ${longName}`, { timeout: TIMEOUT_MS })
    .catch(() => {});
  const header = await bob.$eval('#channel-name', (element) => element.textContent);
  check(header === `# ${longName}`, `the chosen channel is on screen: ${header}`);
  await checkNoOverflow(bob, 'with a 64-character channel name and a long topic');

  await bob.click('#sidebar-toggle');
  await bob.click('#channel-tree .channel-link:has-text("general")');
  await bob.waitForFunction(() => !document.querySelector('#sidebar').classList.contains('open'), null, { timeout: TIMEOUT_MS });
  await bob.waitForTimeout(250);
  await screenshot(bob, 'narrow-chat');
});
