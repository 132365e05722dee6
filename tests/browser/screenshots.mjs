// Takes the README's screenshots of the main views. tests/browser.rs runs
// it with AURA_SCREENSHOT_DIR=docs/screenshots from the ignored test
// screenshots_refresh; it also passes as a plain check of those views.

import {
  run, registerUser, sendMessage, waitForMessage, check, apiFromPage, baseUrl, watchPage,
  selectChannel, screenshot, TIMEOUT_MS,
} from './lib.mjs';

await run('screenshots', async (browser) => {
  const context = await browser.newContext({ viewport: { width: 900, height: 620 } });
  const login = await context.newPage();
  watchPage(login, 'login');
  await login.goto(`${baseUrl}/`);
  await login.click('#show-register');
  await login.waitForSelector('#register-section:not([hidden])', { timeout: TIMEOUT_MS });
  await screenshot(login, 'register');
  await context.close();

  const { page: admin } = await registerUser(browser, 'admin', { admin: true, viewport: { width: 1100, height: 680 } });
  const { page: bob } = await registerUser(browser, 'bob', { viewport: { width: 1100, height: 680 } });
  const { page: carol } = await registerUser(browser, 'carol', { viewport: { width: 1100, height: 680 } });

  const layout = await apiFromPage(admin, 'GET', '/api/layout');
  const community = layout.body.categories[0].id;
  const projects = await apiFromPage(admin, 'POST', '/api/categories', { name: 'Projects' });
  check(projects.status === 201, `creating a category returns 201: ${projects.status}`);
  for (const [category, name, extra] of [
    [community, 'random', {}],
    [projects.body.id, 'design', { topic: 'Mockups and reviews' }],
    [projects.body.id, 'backstage', { min_tier: 'pro', topic: 'For pro members' }],
  ]) {
    const created = await apiFromPage(admin, 'POST', '/api/channels', { category, name, ...extra });
    check(created.status === 201, `creating #${name} returns 201: ${created.status}`);
  }

  await sendMessage(admin, 'Welcome to Aura! The house rules are at https://example.com/rules.');
  await waitForMessage(bob, 'Welcome to Aura! The house rules are at https://example.com/rules.');
  await sendMessage(bob, 'Hi all, glad to be here.');
  await sendMessage(bob, 'Is there a channel for design feedback?');
  await waitForMessage(carol, 'Is there a channel for design feedback?');
  await sendMessage(carol, '@bob yes, #design in Projects. Post your mockups there.');
  await waitForMessage(bob, '@bob yes, #design in Projects. Post your mockups there.');
  await sendMessage(bob, 'Thanks @carol!\nI will share the first draft tonight.');
  await waitForMessage(carol, 'Thanks @carol!\nI will share the first draft tonight.');

  await selectChannel(admin, 'announcements');
  await sendMessage(admin, 'Maintenance on Sunday at 06:00 UTC.');
  await selectChannel(carol, 'random');
  await sendMessage(carol, 'Anyone up for a game tonight, @bob?');
  await bob.waitForFunction(() => document.querySelectorAll('#channel-tree .unread-badge').length === 2, null, { timeout: TIMEOUT_MS });
  await bob.waitForTimeout(300);
  await screenshot(bob, 'chat');

  await selectChannel(admin, 'general');
  await admin.click('#channel-tree .channel-item:has-text("design") button[aria-label^="Actions for channel"]');
  await admin.click('#dialog button:text-is("Edit…")');
  await admin.waitForSelector('#dialog input[name=name]', { timeout: TIMEOUT_MS });
  await screenshot(admin, 'admin-edit-channel');
  await admin.keyboard.press('Escape');

  await bob.setViewportSize({ width: 360, height: 720 });
  await bob.waitForTimeout(300);
  await screenshot(bob, 'narrow-chat');
  await bob.click('#sidebar-toggle');
  await bob.waitForTimeout(300);
  await screenshot(bob, 'narrow-drawer');
});
