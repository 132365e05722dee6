// Long channels: the view keeps at most 500 messages in the DOM, loads
// older pages when the reader scrolls up without moving what they see,
// and shows a "new messages" marker instead of jumping while they read
// older messages.

import {
  run, registerUser, sendMessage, waitForMessage, check, apiFromPage, TIMEOUT_MS,
} from './lib.mjs';

const WINDOW = 500;
const TOTAL = 620;

// Posts messages from the page in parallel batches, numbered from `first`.
async function postMany(page, channelId, first, count) {
  return page.evaluate(async ({ channelId, first, count }) => {
    const failures = [];
    for (let start = first; start < first + count; start += 25) {
      const batch = [];
      for (let number = start; number < Math.min(first + count, start + 25); number += 1) {
        batch.push(fetch(`/api/channels/${channelId}/messages`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ content: `message ${String(number).padStart(4, '0')}`, nonce: `bulk-${number}` }),
        }).then((response) => { if (!response.ok) failures.push(response.status); }));
      }
      await Promise.all(batch);
    }
    return failures;
  }, { channelId, first, count });
}

function renderedCount(page) {
  return page.$$eval('#message-list .message', (items) => items.length);
}

await run('history', async (browser) => {
  const { page: admin } = await registerUser(browser, 'admin', { admin: true });
  const layout = await apiFromPage(admin, 'GET', '/api/layout');
  const general = layout.body.categories[0].channels.find((channel) => channel.name === 'general');
  const failures = await postMany(admin, general.id, 1, TOTAL);
  check(failures.length === 0, `every bulk message was stored: ${failures}`);
  await waitForMessage(admin, `message ${String(TOTAL).padStart(4, '0')}`);

  // Live messages beyond the window push the oldest out of the DOM.
  const live = await renderedCount(admin);
  check(live === WINDOW, `a reader at the bottom keeps ${WINDOW} messages in the DOM: ${live}`);

  // A fresh page shows the newest page; scrolling up loads older pages
  // while the first visible message stays where it was.
  const { page: bob } = await registerUser(browser, 'bob');
  await waitForMessage(bob, `message ${String(TOTAL).padStart(4, '0')}`);
  const initial = await renderedCount(bob);
  check(initial === 50, `a new view starts with one page of 50: ${initial}`);
  for (let round = 1; round <= 3; round += 1) {
    // Scrolling to the top loads the page before; the scroll event fires
    // after this evaluation, so the anchor is taken before the load starts.
    const before = await renderedCount(bob);
    const anchor = await bob.evaluate(() => {
      const scroller = document.querySelector('#message-scroller');
      scroller.scrollTop = 0;
      const top = scroller.getBoundingClientRect().top;
      const item = [...document.querySelectorAll('#message-list .message')]
        .find((element) => element.getBoundingClientRect().top >= top);
      return { id: item.dataset.messageId, offset: item.getBoundingClientRect().top - top };
    });
    await bob.waitForFunction((count) => document.querySelectorAll('#message-list .message').length > count, before, { timeout: TIMEOUT_MS });
    const offset = await bob.evaluate((id) => {
      const scroller = document.querySelector('#message-scroller');
      const item = document.querySelector(`#message-list .message[data-message-id="${id}"]`);
      return item.getBoundingClientRect().top - scroller.getBoundingClientRect().top;
    }, anchor.id);
    check(Math.abs(offset - anchor.offset) <= 2, `loading older page ${round} keeps the view in place: offset ${anchor.offset} became ${offset}`);
  }
  const loaded = await renderedCount(bob);
  check(loaded === 200, `three older pages were added to the first: ${loaded}`);

  // While bob reads older messages, a new one shows the marker and the
  // button instead of scrolling him away.
  const scrollTop = await bob.evaluate(() => document.querySelector('#message-scroller').scrollTop);
  await sendMessage(admin, 'a new message while bob reads history');
  await bob.waitForSelector('#jump-to-new:not([hidden])', { timeout: TIMEOUT_MS });
  const state = await bob.evaluate(() => ({
    scrollTop: document.querySelector('#message-scroller').scrollTop,
    marker: document.querySelector('#message-list .new-marker + .message .message-content')?.textContent,
    button: document.querySelector('#jump-to-new').textContent,
  }));
  check(Math.abs(state.scrollTop - scrollTop) <= 2, `the view did not move: ${scrollTop} became ${state.scrollTop}`);
  check(state.marker === 'a new message while bob reads history', `the marker stands before the new message: ${state.marker}`);
  check(state.button === '1 new message ↓', `the button counts the new message: ${state.button}`);
  await bob.click('#jump-to-new');
  await bob.waitForFunction(() => document.querySelector('#jump-to-new').hidden, null, { timeout: TIMEOUT_MS });
  const pinned = await bob.evaluate(() => {
    const scroller = document.querySelector('#message-scroller');
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight;
  });
  check(pinned <= 48, `the button scrolls to the newest message: ${pinned} px from the bottom`);

  // At the bottom again, new messages keep the view pinned.
  await sendMessage(admin, 'one more while bob is at the bottom');
  await waitForMessage(bob, 'one more while bob is at the bottom');
  await bob.waitForTimeout(100);
  const stillPinned = await bob.evaluate(() => {
    const scroller = document.querySelector('#message-scroller');
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight;
  });
  check(stillPinned <= 48, `the view follows new messages at the bottom: ${stillPinned} px from the bottom`);
});
