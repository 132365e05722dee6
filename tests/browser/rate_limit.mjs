// Against a server that allows bursts of 3 sends refilled at 1 per second,
// a fast sender sees when the rate limit lets the next message through,
// and the held messages go out by themselves, each exactly once.

import {
  run, registerUser, sendMessage, waitForMessage, messageTexts, check, TIMEOUT_MS,
} from './lib.mjs';

await run('rate_limit', async (browser) => {
  const { page: admin } = await registerUser(browser, 'admin', { admin: true });
  const texts = ['one', 'two', 'three', 'four', 'five'].map((word) => `fast message ${word}`);
  for (const text of texts) await sendMessage(admin, text);

  await admin.waitForSelector('#message-list .send-state .warn-text', { timeout: TIMEOUT_MS });
  const waiting = await admin.$eval('#message-list .send-state .warn-text', (element) => element.textContent);
  check(/^Sending too fast: retrying in \d+ s\.$/.test(waiting), `a held message says when it is retried: ${waiting}`);
  const notice = await admin.$eval('#notice-text', (element) => element.textContent);
  check(/^You are sending too fast\. The message goes out again in \d+ s\.$/.test(notice), `the notice says when to retry: ${notice}`);

  for (const text of texts) await waitForMessage(admin, text);
  await admin.waitForFunction(() => document.querySelectorAll('#message-list .message.pending, #message-list .message.failed').length === 0, null, { timeout: TIMEOUT_MS });
  const shown = await messageTexts(admin);
  check(shown.length === texts.length, `each message is shown once: ${JSON.stringify(shown)}`);
  check(JSON.stringify([...shown].sort()) === JSON.stringify([...texts].sort()), `every message was delivered: ${JSON.stringify(shown)}`);
});
