// Two users chat live in two browser contexts: messages, edits, deletes,
// mentions, links, unread and mention badges, the composer's limits and
// its reason in an admins-only channel.

import {
  run, registerUser, sendMessage, waitForMessage, messageTexts, check, selectChannel,
  TIMEOUT_MS, apiFromPage, screenshot,
} from './lib.mjs';

await run('live_chat', async (browser) => {
  const { page: admin } = await registerUser(browser, 'admin', { admin: true });
  const { page: bob } = await registerUser(browser, 'bob');

  // Messages both ways.
  await sendMessage(admin, 'Hello bob, welcome to Aura');
  await waitForMessage(bob, 'Hello bob, welcome to Aura');
  await sendMessage(bob, 'Thanks! Glad to be here.');
  await waitForMessage(admin, 'Thanks! Glad to be here.');
  await sendMessage(bob, 'A second line from bob\nspanning two lines');
  await waitForMessage(admin, 'A second line from bob\nspanning two lines');

  const grouped = await admin.$$eval('#message-list .message', (items) => items.map((item) => item.classList.contains('grouped')));
  check(JSON.stringify(grouped) === JSON.stringify([false, false, true]), `bob's second message is grouped under his first: ${grouped}`);
  const separators = await admin.$$eval('#message-list .day-separator', (items) => items.map((item) => item.textContent));
  check(separators.length === 1 && separators[0] === 'Today', `one date separator reads Today: ${separators}`);

  // A mention of bob is highlighted for bob, and links are links.
  await sendMessage(admin, '@bob see https://example.com/docs?a=1, not javascript:alert(1)');
  await waitForMessage(bob, '@bob see https://example.com/docs?a=1, not javascript:alert(1)');
  const mention = await bob.$eval('#message-list .message:last-child', (item) => ({
    mentionsMe: item.classList.contains('mentions-me'),
    mention: item.querySelector('.mention-self')?.textContent,
    links: [...item.querySelectorAll('a')].map((link) => link.getAttribute('href')),
  }));
  check(mention.mentionsMe, 'a message that mentions bob is marked for bob');
  check(mention.mention === '@bob', `the mention is highlighted: ${mention.mention}`);
  check(JSON.stringify(mention.links) === JSON.stringify(['https://example.com/docs?a=1']), `only the https address is a link: ${mention.links}`);

  // Edit: bob edits his message, admin sees the new text and the mark.
  await bob.hover('#message-list .message:nth-child(3)');
  await bob.click('#message-list .message:nth-child(3) button[aria-label="Edit message"]');
  await bob.fill('#message-list .edit-input', 'Thanks! Glad to be here (edited text).');
  await bob.press('#message-list .edit-input', 'Enter');
  await waitForMessage(admin, 'Thanks! Glad to be here (edited text).');
  const editedMark = await admin.$$eval('#message-list .edited', (marks) => marks.length);
  check(editedMark === 1, `the edited message shows an edited mark: ${editedMark}`);

  // Delete: admin deletes bob's multi-line message, it leaves bob's view.
  await admin.hover('#message-list .message:nth-child(4)');
  await admin.click('#message-list .message:nth-child(4) button[aria-label="Delete message"]');
  await admin.click('#dialog button[data-action=confirm]');
  await bob.waitForFunction(() => ![...document.querySelectorAll('#message-list .message-content')]
    .some((element) => element.textContent.includes('spanning two lines')), null, { timeout: TIMEOUT_MS });
  const bobTexts = await messageTexts(bob);
  check(bobTexts.length === 3, `bob sees three messages after the delete: ${JSON.stringify(bobTexts)}`);

  // Unread and mention badges: admin posts in announcements while bob reads general.
  await selectChannel(admin, 'announcements');
  await sendMessage(admin, 'News for @bob');
  await sendMessage(admin, 'More news');
  await bob.waitForFunction(() => {
    const link = [...document.querySelectorAll('#channel-tree .channel-link')]
      .find((element) => element.textContent.includes('announcements'));
    return link?.querySelector('.unread-badge')?.textContent === '2' && link.querySelector('.mention-badge')?.textContent === '@1';
  }, null, { timeout: TIMEOUT_MS });
  await screenshot(bob, 'chat-desktop');

  // Alt+Down opens the next channel, which clears its badges, and the
  // composer gives the reason bob may not post there.
  await bob.focus('#composer-input');
  await bob.keyboard.press('Alt+ArrowDown');
  await bob.waitForFunction(() => document.querySelector('#channel-name').textContent === '# announcements', null, { timeout: TIMEOUT_MS });
  await waitForMessage(bob, 'More news');
  await bob.waitForFunction(() => !document.querySelector('#channel-tree .unread-badge'), null, { timeout: TIMEOUT_MS });
  const composer = await bob.evaluate(() => ({
    disabled: document.querySelector('#composer-input').disabled,
    reason: document.querySelector('#composer-reason').textContent,
  }));
  check(composer.disabled, 'the composer is disabled for a member in an admins-only channel');
  check(composer.reason === 'Only admins can post in this channel.', `the composer gives the reason: ${composer.reason}`);

  // The counter counts Unicode scalar values: 3999 letters and one emoji
  // (two UTF-16 units) are 4000, the limit; one more is over it.
  await selectChannel(bob, 'general');
  const maxChars = 4000;
  await bob.fill('#composer-input', `${'a'.repeat(maxChars - 1)}😀`);
  const atLimit = await bob.evaluate(() => ({
    counter: document.querySelector('#composer-counter').textContent,
    disabled: document.querySelector('#send-button').disabled,
  }));
  check(atLimit.counter === `${maxChars} / ${maxChars}`, `the counter shows the limit: ${atLimit.counter}`);
  check(!atLimit.disabled, 'a message at the limit can be sent');
  await bob.fill('#composer-input', `${'a'.repeat(maxChars)}😀`);
  const overLimit = await bob.evaluate(() => ({
    counter: document.querySelector('#composer-counter').textContent,
    over: document.querySelector('#composer-counter').classList.contains('over'),
    disabled: document.querySelector('#send-button').disabled,
  }));
  check(overLimit.over && overLimit.counter === `${maxChars + 1} / ${maxChars}`, `the counter flags the excess: ${overLimit.counter}`);
  check(overLimit.disabled, 'Send is disabled over the limit');
  await bob.press('#composer-input', 'Enter');
  await bob.fill('#composer-input', '');

  // What the server stored matches what both pages show.
  const channels = await apiFromPage(bob, 'GET', '/api/layout');
  const general = channels.body.categories[0].channels.find((channel) => channel.name === 'general');
  const stored = await apiFromPage(bob, 'GET', `/api/channels/${general.id}/messages?limit=50`);
  const storedTexts = stored.body.messages.map((message) => message.content);
  const adminTexts = await (async () => {
    await selectChannel(admin, 'general');
    return messageTexts(admin);
  })();
  check(JSON.stringify(storedTexts) === JSON.stringify(await messageTexts(bob)), `bob's view matches the server: ${JSON.stringify(storedTexts)}`);
  check(JSON.stringify(storedTexts) === JSON.stringify(adminTexts), `admin's view matches the server: ${JSON.stringify(adminTexts)}`);

  // With localStorage full, sending and caching fail quietly and chat goes on.
  const filled = await bob.evaluate(() => {
    const chunk = 'x'.repeat(256 * 1024);
    let count = 0;
    try {
      for (; count < 200; count += 1) localStorage.setItem(`filler-${count}`, chunk);
    } catch (error) {
      return error.name;
    }
    return `stored ${count} chunks without an error`;
  });
  check(filled === 'QuotaExceededError', `the test filled localStorage: ${filled}`);
  await sendMessage(bob, 'sent with storage full');
  await waitForMessage(admin, 'sent with storage full');
  await sendMessage(admin, 'received with storage full');
  await waitForMessage(bob, 'received with storage full');
  await bob.waitForTimeout(1500); // the channel cache is written a second after a change
  await bob.evaluate(() => Object.keys(localStorage).filter((key) => key.startsWith('filler-')).forEach((key) => localStorage.removeItem(key)));
});
