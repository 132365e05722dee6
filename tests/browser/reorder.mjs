// An admin reorders channels and categories by drag and drop and by the
// keyboard menu; the other user's sidebar follows without a reload.
// Collapsed categories stay collapsed on this device after a reload.

import {
  run, registerUser, check, apiFromPage, sidebarChannels, waitLive, TIMEOUT_MS, screenshot,
} from './lib.mjs';

function categoryNames(page) {
  return page.$$eval('#channel-tree .category-name', (elements) => elements.map((element) => element.textContent));
}

// Polls `read` until it returns `expected`, for at most TIMEOUT_MS.
async function waitForOrder(page, read, expected, what) {
  const deadline = Date.now() + TIMEOUT_MS;
  for (;;) {
    const actual = await read(page);
    if (JSON.stringify(actual) === JSON.stringify(expected)) return;
    check(Date.now() < deadline, `${what}: expected ${JSON.stringify(expected)}, saw ${JSON.stringify(actual)}`);
    await page.waitForTimeout(100);
  }
}

function channelLink(name) {
  return `#channel-tree .channel-item:has(.channel-link-name:text-is("# ${name}"))`;
}

await run('reorder', async (browser) => {
  const { page: admin } = await registerUser(browser, 'admin', { admin: true });
  const { page: bob } = await registerUser(browser, 'bob');
  await bob.evaluate(() => { window.__sameDocument = true; });

  const layout = await apiFromPage(admin, 'GET', '/api/layout');
  const community = layout.body.categories[0].id;
  for (const name of ['random', 'help']) {
    const created = await apiFromPage(admin, 'POST', '/api/channels', { category: community, name });
    check(created.status === 201, `creating #${name} returns 201: ${created.status}`);
  }
  await waitForOrder(bob, sidebarChannels, ['general', 'announcements', 'random', 'help'], 'bob sees the new channels');

  // Drag #help onto the upper half of #general: it goes first.
  await admin.dragAndDrop(channelLink('help'), channelLink('general'), { targetPosition: { x: 20, y: 3 } });
  await waitForOrder(bob, sidebarChannels, ['help', 'general', 'announcements', 'random'], 'bob sees #help dragged to the top');
  await waitForOrder(admin, sidebarChannels, ['help', 'general', 'announcements', 'random'], 'admin sees the same order');

  // Drag #general onto the lower half of #random: it goes last.
  const randomBox = await admin.locator(channelLink('random')).boundingBox();
  await admin.dragAndDrop(channelLink('general'), channelLink('random'), { targetPosition: { x: 20, y: randomBox.height - 3 } });
  await waitForOrder(bob, sidebarChannels, ['help', 'announcements', 'random', 'general'], 'bob sees #general dragged to the end');

  // The keyboard path: the channel's menu moves #random up.
  await admin.focus(`${channelLink('random')} button[aria-label="Actions for channel random"]`);
  await admin.keyboard.press('Enter');
  await admin.click('#dialog button:text-is("Move up")');
  await waitForOrder(bob, sidebarChannels, ['help', 'random', 'announcements', 'general'], 'bob sees #random moved up from the menu');

  // Categories: a new one dragged above Community, then a channel dragged into it.
  const created = await apiFromPage(admin, 'POST', '/api/categories', { name: 'Off topic' });
  check(created.status === 201, `creating a category returns 201: ${created.status}`);
  await waitForOrder(bob, categoryNames, ['Community', 'Off topic'], 'bob sees the new category');
  await admin.dragAndDrop('#channel-tree .category:last-child .category-header', '#channel-tree .category:first-child .category-header', { targetPosition: { x: 20, y: 2 } });
  await waitForOrder(bob, categoryNames, ['Off topic', 'Community'], 'bob sees the category dragged to the top');
  await admin.dragAndDrop(channelLink('help'), '#channel-tree .category:first-child .category-header', { targetPosition: { x: 20, y: 5 } });
  const firstCategoryChannels = (page) => page.$$eval('#channel-tree .category:first-child .channel-link-name', (elements) => elements.map((element) => element.textContent));
  await waitForOrder(bob, firstCategoryChannels, ['# help'], 'bob sees #help in Off topic');
  await waitForOrder(bob, sidebarChannels, ['help', 'random', 'announcements', 'general'], 'bob sees #help left Community');

  check(await bob.evaluate(() => window.__sameDocument === true), 'bob\'s page was never reloaded');
  await screenshot(admin, 'admin-sidebar');

  // Bob collapses Community; after a reload it is still collapsed and shows
  // only the channel on screen.
  await bob.click('#channel-tree .channel-link:has-text("random")');
  await bob.click('#channel-tree .category:nth-child(2) .category-toggle');
  await bob.reload();
  await waitLive(bob);
  await bob.waitForSelector('#channel-tree .category:nth-child(2)', { timeout: TIMEOUT_MS });
  const collapsed = await bob.$eval('#channel-tree .category:nth-child(2)', (section) => ({
    expanded: section.querySelector('.category-toggle').getAttribute('aria-expanded'),
    channels: [...section.querySelectorAll('.channel-link-name')].map((element) => element.textContent),
  }));
  check(collapsed.expanded === 'false', `Community is still collapsed after a reload: ${collapsed.expanded}`);
  check(JSON.stringify(collapsed.channels) === JSON.stringify(['# random']), `a collapsed category shows only the selected channel: ${JSON.stringify(collapsed.channels)}`);
});
