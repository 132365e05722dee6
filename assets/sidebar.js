// The sidebar: categories (collapsible, with the state kept on this
// device), channels in the server's order with lock, unread and mention
// badges, and for admins drag and drop plus menus to change the structure.
// On narrow screens the sidebar is a drawer.

import { state, isAdmin } from './state.js';
import { dom, createElement, createButton } from './dom.js';
import { onRender, invalidate } from './render.js';
import { channelCache, unreadCounts } from './model.js';
import { selectChannel } from './connection.js';
import { actionsDialog, formDialog } from './dialogs.js';
import * as admin from './admin.js';
import * as storage from './storage.js';

let collapsed = new Set(); // ids of collapsed categories
let drag = null; // {kind: 'category'|'channel', id} while an admin drags an item
let renderDeferred = false; // a render was skipped during a drag

export function loadSidebarState() {
  const saved = storage.readJson(state.user.id, 'collapsed', []);
  collapsed = new Set(Array.isArray(saved) ? saved.map(String) : []);
}

function toggleCategory(id) {
  if (collapsed.has(id)) collapsed.delete(id);
  else collapsed.add(id);
  storage.writeJson(state.user.id, 'collapsed', [...collapsed]);
  invalidate('sidebar');
}

// ---------------------------------------------------------------------------
// Rendering

onRender('sidebar', () => {
  // Replacing the dragged element would end the drag, so the render waits.
  if (drag) {
    renderDeferred = true;
    return;
  }
  const focusKey = document.activeElement?.dataset?.focusKey;
  const sections = (state.layout?.categories ?? []).map(buildCategory);
  dom.channelTree.replaceChildren(...sections);
  dom.adminTools.hidden = !isAdmin();
  markDrawerButton();
  if (focusKey) dom.channelTree.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`)?.focus();
});

// On narrow screens the closed drawer hides the badges, so the Channels
// button shows whether any channel has unread messages or mentions.
function markDrawerButton() {
  let unread = 0;
  let mentions = 0;
  for (const channel of (state.layout?.categories ?? []).flatMap((category) => category.channels ?? [])) {
    const counts = channelCounts(channel);
    unread += counts.unread;
    mentions += counts.mentions;
  }
  let mark = '';
  if (mentions > 0) mark = 'mention';
  else if (unread > 0) mark = 'unread';
  dom.sidebarToggle.dataset.unread = mark;
  let label = 'Channels';
  if (mentions > 0) label = `Channels, ${mentions === 1 ? '1 mention' : `${mentions} mentions`}`;
  else if (unread > 0) label = 'Channels, unread messages';
  dom.sidebarToggle.setAttribute('aria-label', label);
}

function buildCategory(category, categoryIndex) {
  const id = String(category.id);
  const isCollapsed = collapsed.has(id);
  const section = createElement('section', 'category');
  section.dataset.categoryId = id;

  const header = createElement('div', 'category-header');
  const listId = `category-${id}-channels`;
  const toggle = createButton('', 'category-toggle', () => toggleCategory(id));
  toggle.dataset.focusKey = `category:${id}`;
  toggle.setAttribute('aria-expanded', String(!isCollapsed));
  toggle.setAttribute('aria-controls', listId);
  toggle.append(createElement('span', 'caret', isCollapsed ? '▸' : '▾'), createElement('span', 'category-name', category.name));
  if (isCollapsed) {
    const totals = (category.channels ?? []).reduce((sum, channel) => {
      const counts = channelCounts(channel);
      return { unread: sum.unread + counts.unread, mentions: sum.mentions + counts.mentions };
    }, { unread: 0, mentions: 0 });
    appendCountBadges(toggle, totals);
  }
  header.append(toggle);
  if (isAdmin()) {
    const menu = createButton('⋯', 'icon-button', () => openCategoryMenu(category, categoryIndex));
    menu.dataset.focusKey = `category-menu:${id}`;
    menu.setAttribute('aria-label', `Actions for category ${category.name}`);
    header.append(menu);
    makeDraggable(header, { kind: 'category', id: category.id });
    header.addEventListener('dragover', (event) => onChannelOverCategory(event, header));
    header.addEventListener('drop', (event) => onChannelDropOnCategory(event, category));
    section.addEventListener('dragover', (event) => onCategoryOver(event, section));
    section.addEventListener('drop', (event) => onCategoryDrop(event, section, categoryIndex));
  }
  section.append(header);

  const list = createElement('ul', 'channel-links');
  list.id = listId;
  (category.channels ?? []).forEach((channel, index) => {
    // A collapsed category still shows the channel on screen.
    if (isCollapsed && String(channel.id) !== state.selectedChannelKey) return;
    list.append(buildChannelItem(channel, category, index));
  });
  section.append(list);
  return section;
}

function channelCounts(channel) {
  if (channel.locked) return { unread: 0, mentions: 0 };
  const key = String(channel.id);
  if (key === state.selectedChannelKey && document.visibilityState === 'visible') return { unread: 0, mentions: 0 };
  return unreadCounts(channelCache(key));
}

function appendCountBadges(element, { unread, mentions }) {
  if (mentions > 0) {
    const badge = createElement('span', 'badge mention-badge', `@${mentions}`);
    badge.setAttribute('aria-label', mentions === 1 ? '1 mention' : `${mentions} mentions`);
    element.append(badge);
  }
  if (unread > 0) {
    const badge = createElement('span', 'badge unread-badge', String(unread));
    badge.setAttribute('aria-label', unread === 1 ? '1 unread message' : `${unread} unread messages`);
    element.append(badge);
  }
}

function buildChannelItem(channel, category, index) {
  const key = String(channel.id);
  const item = createElement('li', 'channel-item');
  item.dataset.channelId = key;

  const link = createButton('', 'channel-link', () => {
    selectChannel(key);
    closeDrawer();
  });
  link.dataset.focusKey = `channel:${key}`;
  link.append(createElement('span', 'channel-link-name', `# ${channel.name}`));
  if (channel.locked) {
    const lock = createElement('span', 'badge lock-badge', `locked: ${channel.min_tier}`);
    lock.title = `Needs the ${channel.min_tier} tier or higher`;
    link.append(lock);
    link.classList.add('locked');
  } else {
    if (channel.post === 'admins') {
      const badge = createElement('span', 'badge', 'admins');
      badge.title = 'Only admins can post here';
      link.append(badge);
    }
    const counts = channelCounts(channel);
    appendCountBadges(link, counts);
    link.classList.toggle('unread', counts.unread > 0);
  }
  if (channel.hidden) link.append(createElement('span', 'badge', 'hidden'));
  if (key === state.selectedChannelKey) link.setAttribute('aria-current', 'page');
  item.append(link);

  if (isAdmin()) {
    const menu = createButton('⋯', 'icon-button', () => openChannelMenu(channel, category, index));
    menu.dataset.focusKey = `channel-menu:${key}`;
    menu.setAttribute('aria-label', `Actions for channel ${channel.name}`);
    item.append(menu);
    makeDraggable(item, { kind: 'channel', id: channel.id });
    item.addEventListener('dragover', (event) => onChannelOverChannel(event, item));
    item.addEventListener('drop', (event) => onChannelDrop(event, item, category, index));
  }
  return item;
}

// ---------------------------------------------------------------------------
// Admin menus, which also offer every move by keyboard

function openCategoryMenu(category, index) {
  const count = state.layout.categories.length;
  return actionsDialog({
    title: `Category ${category.name}`,
    actions: [
      { label: 'New channel…', run: () => admin.createChannel(category) },
      { label: 'Rename…', run: () => admin.renameCategory(category) },
      { label: 'Move up', disabled: index === 0, run: () => admin.moveItem('category', category.id, index - 1) },
      { label: 'Move down', disabled: index >= count - 1, run: () => admin.moveItem('category', category.id, index + 1) },
      { label: 'Delete…', danger: true, run: () => admin.deleteCategory(category) },
    ],
  });
}

function openChannelMenu(channel, category, index) {
  const count = category.channels.length;
  return actionsDialog({
    title: `Channel #${channel.name}`,
    actions: [
      { label: 'Edit…', run: () => admin.editChannel(channel) },
      { label: 'Move up', disabled: index === 0, run: () => admin.moveItem('channel', channel.id, index - 1, category.id) },
      { label: 'Move down', disabled: index >= count - 1, run: () => admin.moveItem('channel', channel.id, index + 1, category.id) },
      { label: 'Move to category…', disabled: state.layout.categories.length < 2, run: () => chooseCategory(channel, category) },
      { label: 'Delete…', danger: true, run: () => admin.deleteChannel(channel) },
    ],
  });
}

function chooseCategory(channel, current) {
  const options = state.layout.categories
    .filter((category) => category.id !== current.id)
    .map((category) => ({ value: String(category.id), label: category.name }));
  return formDialog({
    title: `Move #${channel.name}`,
    submitLabel: 'Move',
    fields: [{ name: 'category', label: 'To the end of', type: 'select', options, value: options[0]?.value }],
    submit: (values) => admin.moveItem('channel', channel.id, Number.MAX_SAFE_INTEGER, values.category),
  });
}

// ---------------------------------------------------------------------------
// Drag and drop. Each drop turns into one move operation: the item and its
// index in the target list after it left its old place, so moves by two
// admins at once both take effect.

function makeDraggable(element, item) {
  element.draggable = true;
  element.addEventListener('dragstart', (event) => {
    event.stopPropagation();
    drag = item;
    event.dataTransfer.effectAllowed = 'move';
    event.dataTransfer.setData('text/plain', String(item.id));
    element.classList.add('dragging');
  });
  element.addEventListener('dragend', () => {
    element.classList.remove('dragging');
    drag = null;
    clearDropMarks();
    if (renderDeferred) {
      renderDeferred = false;
      invalidate('sidebar');
    }
  });
}

function clearDropMarks() {
  for (const element of dom.channelTree.querySelectorAll('.drop-before, .drop-after, .drop-into')) {
    element.classList.remove('drop-before', 'drop-after', 'drop-into');
  }
}

// Whether the pointer is in the lower half of the element.
function isLowerHalf(event, element) {
  const rect = element.getBoundingClientRect();
  return event.clientY > rect.top + rect.height / 2;
}

function markDrop(element, className) {
  if (element.classList.contains(className)) return;
  clearDropMarks();
  element.classList.add(className);
}

function onChannelOverChannel(event, item) {
  if (drag?.kind !== 'channel') return;
  event.preventDefault();
  event.dataTransfer.dropEffect = 'move';
  markDrop(item, isLowerHalf(event, item) ? 'drop-after' : 'drop-before');
}

function onChannelDrop(event, item, category, index) {
  if (drag?.kind !== 'channel') return;
  event.preventDefault();
  event.stopPropagation();
  moveChannel(drag.id, category, isLowerHalf(event, item) ? index + 1 : index);
}

function onChannelOverCategory(event, header) {
  if (drag?.kind !== 'channel') return;
  event.preventDefault();
  event.dataTransfer.dropEffect = 'move';
  markDrop(header, 'drop-into');
}

function onChannelDropOnCategory(event, category) {
  if (drag?.kind !== 'channel') return;
  event.preventDefault();
  event.stopPropagation();
  moveChannel(drag.id, category, 0);
}

function onCategoryOver(event, section) {
  if (drag?.kind !== 'category') return;
  event.preventDefault();
  event.dataTransfer.dropEffect = 'move';
  markDrop(section, isLowerHalf(event, section) ? 'drop-after' : 'drop-before');
}

function onCategoryDrop(event, section, index) {
  if (drag?.kind !== 'category') return;
  event.preventDefault();
  const position = isLowerHalf(event, section) ? index + 1 : index;
  const from = state.layout.categories.findIndex((category) => String(category.id) === String(drag.id));
  const target = from < position ? position - 1 : position;
  if (from !== -1 && from !== target) admin.moveItem('category', drag.id, target);
  clearDropMarks();
}

// Moves a channel to `position`, an insertion point in the target
// category's list as it is now.
function moveChannel(id, category, position) {
  clearDropMarks();
  const from = category.channels.findIndex((channel) => String(channel.id) === String(id));
  let index = position;
  if (from !== -1 && from < position) index -= 1;
  if (from !== -1 && from === index) return;
  admin.moveItem('channel', id, index, category.id);
}

// ---------------------------------------------------------------------------
// Drawer on narrow screens

export function openDrawer() {
  dom.sidebar.classList.add('open');
  dom.sidebarBackdrop.hidden = false;
  dom.sidebarToggle.setAttribute('aria-expanded', 'true');
  (dom.sidebar.querySelector('[aria-current="page"]') ?? dom.sidebar.querySelector('button'))?.focus();
}

export function closeDrawer() {
  if (!dom.sidebar.classList.contains('open')) return;
  dom.sidebar.classList.remove('open');
  dom.sidebarBackdrop.hidden = true;
  dom.sidebarToggle.setAttribute('aria-expanded', 'false');
}

// Selects the previous (-1) or next (+1) readable channel in sidebar order,
// for Alt+Up and Alt+Down.
function selectNeighbour(step) {
  const readable = (state.layout?.categories ?? [])
    .flatMap((category) => category.channels ?? [])
    .filter((channel) => !channel.locked);
  if (readable.length === 0) return;
  const current = readable.findIndex((channel) => String(channel.id) === state.selectedChannelKey);
  const next = readable[(current + step + readable.length) % readable.length];
  selectChannel(String(next.id));
}

export function bindSidebarEvents() {
  document.addEventListener('keydown', (event) => {
    if (!state.user || !event.altKey || event.ctrlKey || event.metaKey || dom.dialog.open) return;
    if (event.key !== 'ArrowUp' && event.key !== 'ArrowDown') return;
    event.preventDefault();
    selectNeighbour(event.key === 'ArrowUp' ? -1 : 1);
  });
  dom.sidebarToggle.addEventListener('click', () => {
    if (dom.sidebar.classList.contains('open')) closeDrawer();
    else openDrawer();
  });
  dom.sidebarBackdrop.addEventListener('click', closeDrawer);
  dom.sidebar.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && dom.sidebar.classList.contains('open')) {
      closeDrawer();
      dom.sidebarToggle.focus();
    }
  });
  dom.newCategoryButton.addEventListener('click', () => admin.createCategory());
}
