// The server restarts under two open pages. Messages sent while it is down
// wait in the outbox, in memory and in localStorage, and are delivered
// exactly once when it is back: from a page that stayed open, and from a
// page that was closed and opened again. Afterwards every view holds
// exactly the server's messages, with no duplicate and no gap.

import {
  run, registerUser, sendMessage, waitForMessage, messageTexts, check, control, apiFromPage,
  waitLive, watchPage, baseUrl, TIMEOUT_MS,
} from './lib.mjs';

// Reconnect backoff grows to several seconds while the server is down.
const RECONNECT_TIMEOUT_MS = 45_000;

async function storedTexts(page) {
  const layout = await apiFromPage(page, 'GET', '/api/layout');
  const general = layout.body.categories[0].channels.find((channel) => channel.name === 'general');
  const stored = await apiFromPage(page, 'GET', `/api/channels/${general.id}/messages?limit=200`);
  check(stored.status === 200, `the server lists the messages: ${stored.status}`);
  return stored.body.messages.map((message) => message.content);
}

function duplicates(texts) {
  return texts.filter((text, index) => texts.indexOf(text) !== index);
}

async function checkViewMatchesServer(page, name, expected) {
  const texts = await messageTexts(page);
  check(duplicates(texts).length === 0, `${name}'s view has no duplicates: ${JSON.stringify(duplicates(texts))}`);
  check(JSON.stringify(texts) === JSON.stringify(expected), `${name}'s view equals the server's messages:\n  view:   ${JSON.stringify(texts)}\n  server: ${JSON.stringify(expected)}`);
}

await run('restart', async (browser) => {
  const { page: admin } = await registerUser(browser, 'admin', { admin: true });
  const { context: bobContext, page: bob } = await registerUser(browser, 'bob');

  for (let index = 1; index <= 3; index += 1) {
    await sendMessage(admin, `before restart ${index} from admin`);
    await waitForMessage(bob, `before restart ${index} from admin`);
    await sendMessage(bob, `before restart ${index} from bob`);
    await waitForMessage(admin, `before restart ${index} from bob`);
  }

  await control('stop-server');
  for (const page of [admin, bob]) {
    await page.waitForFunction(() => document.querySelector('#connection-status').dataset.state !== 'live', null, { timeout: TIMEOUT_MS });
  }

  // Both send while the server is down: the messages show as pending.
  await sendMessage(admin, 'sent while down by admin');
  await sendMessage(bob, 'sent while down by bob');
  for (const page of [admin, bob]) {
    // Pending messages are rendered in the next animation frame after the send.
    await page.waitForSelector('#message-list .message.pending', { timeout: TIMEOUT_MS }).catch(() => {});
    const pending = await page.$$eval('#message-list .message.pending .message-content', (elements) => elements.map((element) => element.textContent));
    check(pending.length === 1 && pending[0].startsWith('sent while down'), `the unsent message shows as pending: ${JSON.stringify(pending)}`);
  }
  const outbox = await bob.evaluate(() => {
    const key = Object.keys(localStorage).find((name) => name.endsWith('.outbox'));
    return key ? JSON.parse(localStorage.getItem(key)) : null;
  });
  check(outbox?.length === 1 && outbox[0].content === 'sent while down by bob', `bob's outbox in localStorage holds the message: ${JSON.stringify(outbox)}`);

  // Bob closes his tab; his message now lives only in localStorage.
  await bob.close();

  await control('start-server');
  await admin.waitForSelector('#connection-status[data-state=live]', { timeout: RECONNECT_TIMEOUT_MS });
  await waitForMessage(admin, 'sent while down by admin');

  // Bob opens the page again: the session cookie logs him in, and the
  // outbox is sent.
  const bobAgain = await bobContext.newPage();
  watchPage(bobAgain, 'bob (reopened)');
  await bobAgain.goto(`${baseUrl}/`);
  await waitLive(bobAgain);
  await waitForMessage(bobAgain, 'sent while down by bob');
  await waitForMessage(admin, 'sent while down by bob');

  // Sends after the restart reach both.
  await sendMessage(admin, 'after restart from admin');
  await waitForMessage(bobAgain, 'after restart from admin');
  await sendMessage(bobAgain, 'after restart from bob');
  await waitForMessage(admin, 'after restart from bob');
  await admin.waitForFunction(() => document.querySelectorAll('#message-list .message.pending').length === 0, null, { timeout: TIMEOUT_MS });
  await bobAgain.waitForFunction(() => document.querySelectorAll('#message-list .message.pending').length === 0, null, { timeout: TIMEOUT_MS });

  const expected = await storedTexts(admin);
  for (const text of ['sent while down by admin', 'sent while down by bob']) {
    const copies = expected.filter((content) => content === text).length;
    check(copies === 1, `the server stored "${text}" exactly once: ${copies}`);
  }
  check(expected.length === 10, `the server holds the 10 messages sent: ${JSON.stringify(expected)}`);
  await checkViewMatchesServer(admin, 'admin', expected);
  await checkViewMatchesServer(bobAgain, 'bob', expected);

  const outboxAfter = await bobAgain.evaluate(() => {
    const key = Object.keys(localStorage).find((name) => name.endsWith('.outbox'));
    return key ? JSON.parse(localStorage.getItem(key)) : [];
  });
  check(outboxAfter.length === 0, `bob's outbox is empty once the server acknowledged: ${JSON.stringify(outboxAfter)}`);

  // A second restart with both pages open: after it, the views again equal
  // the server, and a reload shows the cached channel before the server answers.
  await control('stop-server');
  await control('start-server');
  for (const page of [admin, bobAgain]) await page.waitForSelector('#connection-status[data-state=live]', { timeout: RECONNECT_TIMEOUT_MS });
  await sendMessage(admin, 'after second restart');
  await waitForMessage(bobAgain, 'after second restart');
  const expectedAgain = await storedTexts(admin);
  await checkViewMatchesServer(admin, 'admin after the second restart', expectedAgain);
  await checkViewMatchesServer(bobAgain, 'bob after the second restart', expectedAgain);
});
