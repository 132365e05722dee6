// Script and markup in messages, usernames, channel names, topics and
// category names render as text and run nothing. The admin creates the
// category and channel through the page's own dialogs.

import {
  run, registerUser, sendMessage, waitForMessage, messageTexts, check, selectChannel, TIMEOUT_MS,
} from './lib.mjs';

// Each payload would set window.__xss or add an element if it were parsed as HTML.
const MESSAGE = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script><b>bold</b> & &amp;';
const CATEGORY = '<img src=x onerror="window.__xss=3">Cat';
const CHANNEL = '<b>chan</b><script>window.__xss=4</script>';
const TOPIC = '<iframe src="javascript:window.__xss=5"></iframe> topic';
const LINK = 'javascript:window.__xss=6 and <a href="javascript:window.__xss=7">click</a>';
// Usernames allow only ASCII letters, digits, "_", "-" and ".", so the
// hardest one the server accepts is made of those.
const USERNAME = 'Eve.O-Neil_2';

// Elements that a payload could have created inside the app's containers.
async function injectedElements(page) {
  return page.evaluate(() => {
    const selector = '#channel-tree, #channel-name, #channel-topic, #message-list, #presence-list, #current-user';
    return [...document.querySelectorAll(selector)]
      .flatMap((root) => [...root.querySelectorAll('img, script, b, iframe, a[href^="javascript"]')])
      .map((element) => element.outerHTML);
  });
}

await run('escaping', async (browser) => {
  const { page: admin } = await registerUser(browser, 'admin', { admin: true });
  const { page: eve } = await registerUser(browser, USERNAME);

  // The admin creates a category and a channel with markup in their names.
  await admin.click('#new-category-button');
  await admin.fill('#dialog input[name=name]', CATEGORY);
  await admin.click('#dialog button[type=submit]');
  await admin.waitForFunction((name) => [...document.querySelectorAll('#channel-tree .category-name')]
    .some((element) => element.textContent === name), CATEGORY, { timeout: TIMEOUT_MS });
  await admin.click(`#channel-tree .category:last-child .category-header button[aria-label^="Actions for category"]`);
  await admin.click('#dialog button:text-is("New channel…")');
  await admin.fill('#dialog input[name=name]', CHANNEL);
  await admin.fill('#dialog textarea[name=topic]', TOPIC);
  await admin.click('#dialog button[type=submit]');

  // Eve sees both names as text, without a reload.
  await eve.waitForFunction((name) => [...document.querySelectorAll('#channel-tree .channel-link-name')]
    .some((element) => element.textContent === `# ${name}`), CHANNEL, { timeout: TIMEOUT_MS });
  const categoryNames = await eve.$$eval('#channel-tree .category-name', (elements) => elements.map((element) => element.textContent));
  check(categoryNames.includes(CATEGORY), `the category name is shown as text: ${JSON.stringify(categoryNames)}`);
  await selectChannel(eve, CHANNEL);
  const header = await eve.evaluate(() => ({
    topic: document.querySelector('#channel-topic').textContent,
    title: document.title,
  }));
  check(header.topic === TOPIC, `the topic is shown as text: ${header.topic}`);
  check(header.title.includes(CHANNEL), `the document title holds the name as text: ${header.title}`);

  // Messages with markup, from both users, in the new channel.
  await sendMessage(eve, MESSAGE);
  await selectChannel(admin, CHANNEL);
  await waitForMessage(admin, MESSAGE);
  await sendMessage(admin, `${LINK} @${USERNAME}`);
  await waitForMessage(eve, `${LINK} @${USERNAME}`);
  await waitForMessage(admin, `${LINK} @${USERNAME}`);

  for (const [name, page] of [['admin', admin], ['eve', eve]]) {
    const texts = await messageTexts(page);
    check(texts[0] === MESSAGE, `${name} sees the markup message as text: ${texts[0]}`);
    check(texts[1] === `${LINK} @${USERNAME}`, `${name} sees the link text as text: ${texts[1]}`);
    const elements = await injectedElements(page);
    check(elements.length === 0, `${name}'s page has no element from a payload: ${elements.join(' ')}`);
    const xss = await page.evaluate(() => window.__xss);
    check(xss === undefined, `no payload ran on ${name}'s page: window.__xss is ${xss}`);
  }

  const authors = await admin.$$eval('#message-list .author', (elements) => elements.map((element) => element.textContent));
  check(authors[0] === USERNAME, `the username is shown exactly: ${authors[0]}`);
  const mention = await eve.$eval('#message-list .message:last-child .mention-self', (element) => element.textContent);
  check(mention === `@${USERNAME}`, `a mention of the username is highlighted for its user: ${mention}`);

  // Renaming the category to more markup keeps it text on the other page.
  const renamed = '"><svg onload="window.__xss=8">';
  await admin.click(`#channel-tree .category:last-child .category-header button[aria-label^="Actions for category"]`);
  await admin.click('#dialog button:text-is("Rename…")');
  await admin.fill('#dialog input[name=name]', renamed);
  await admin.click('#dialog button[type=submit]');
  await eve.waitForFunction((name) => [...document.querySelectorAll('#channel-tree .category-name')]
    .some((element) => element.textContent === name), renamed, { timeout: TIMEOUT_MS });
  const svg = await eve.evaluate(() => document.querySelectorAll('#channel-tree svg').length);
  check(svg === 0, `the renamed category adds no element: ${svg}`);
  check(await eve.evaluate(() => window.__xss) === undefined, 'the renamed category ran nothing');
});
