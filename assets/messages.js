// The message view of the selected channel. It shows date separators,
// groups the messages of one author, marks edits and pending sends, and
// edits own messages inline. Older pages load without moving the view. New
// messages keep the view at the bottom while the reader is there, and show
// a "new messages" marker otherwise.

import { state, WINDOW_SIZE, selectedChannel, isModerator } from './state.js';
import { dom, createElement, createButton } from './dom.js';
import { onRender, invalidate } from './render.js';
import { channelCache, sortedMessages, trimOldest, markRead, isOwnMessage } from './model.js';
import { pendingSends, sendsInChannel, removeSend } from './outbox.js';
import { editMessage, deleteMessage, retrySend, loadOlderMessages } from './connection.js';
import { buildContent, mentionsUser } from './richtext.js';
import { confirmDialog } from './dialogs.js';
import {
  compareIds, dayKey, formatDay, formatClock, formatDateTime, formatWait,
  trimLikeServer, countScalarValues, hasForbiddenControl,
} from './util.js';

// Distance in px from the bottom within which the list counts as scrolled
// to the bottom and follows new messages.
const PINNED_THRESHOLD_PX = 48;
// Distance in px from the top at which scrolling up loads older messages.
const LOAD_OLDER_THRESHOLD_PX = 300;
// Messages of one author closer together than this are grouped under one header.
const GROUP_WINDOW_MS = 5 * 60 * 1000;

const view = {
  channelKey: null, // channel shown by the last render
  elements: new Map(), // render key -> {signature, element}, reused between renders
  newestRendered: null, // id of the newest message of the last render
  newMarkerId: null, // first message that arrived while the reader was scrolled up
  unseenCount: 0, // messages from others below the reader since they scrolled up
  editingId: null, // message being edited inline
  focusEditor: false,
};

export function isPinnedToBottom() {
  const scroller = dom.messageScroller;
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight <= PINNED_THRESHOLD_PX;
}

function scrollToBottom() {
  dom.messageScroller.scrollTop = dom.messageScroller.scrollHeight;
}

// Starts editing the newest own message of the selected channel, for the
// Up key in an empty composer. Returns whether there was one.
export function editLastOwnMessage() {
  const key = state.selectedChannelKey;
  if (key === null) return false;
  const own = sortedMessages(channelCache(key)).filter(isOwnMessage);
  const last = own[own.length - 1];
  if (!last) return false;
  startEditing(last.id);
  return true;
}

function startEditing(id) {
  view.editingId = id;
  view.focusEditor = true;
  invalidate('messages');
}

function stopEditing() {
  view.editingId = null;
  invalidate('messages');
  dom.composerInput.focus();
}

// ---------------------------------------------------------------------------
// Rendering

// A reader at the bottom stays there; otherwise the first visible message
// keeps its place, whatever was added or removed above it. Options: reset
// (another channel: start at the bottom), rebuild (drop reused elements),
// toBottom (scroll down, as after an own send).
onRender('messages', (options) => {
  const key = state.selectedChannelKey;
  const switched = Boolean(options.reset) || key !== view.channelKey;
  if (switched) {
    view.channelKey = key;
    view.elements.clear();
    view.newestRendered = null;
    view.newMarkerId = null;
    view.unseenCount = 0;
    view.editingId = null;
  }
  if (options.rebuild) view.elements.clear();

  const pinned = switched || Boolean(options.toBottom) || isPinnedToBottom();
  const anchor = pinned ? null : findAnchor();

  const channel = selectedChannel();
  if (!channel || channel.locked) {
    renderUnavailable(channel);
    return;
  }
  const cache = channelCache(key);
  boundWindow(cache, pinned);

  const messages = sortedMessages(cache);
  trackNewMessages(messages, pinned, switched, cache.lastRead);
  const elements = buildElements(key, messages);
  reconcileChildren(dom.messageList, elements);

  dom.emptyChannel.textContent = 'No messages yet.';
  dom.emptyChannel.hidden = !cache.loaded || elements.length > 0 || cache.hasOlder;
  dom.loadOlder.hidden = !cache.hasOlder;
  dom.loadOlder.disabled = Boolean(cache.loadingOlder);
  dom.loadOlder.textContent = cache.loadingOlder ? 'Loading…' : 'Load older messages';

  if (pinned) scrollToBottom();
  else restoreAnchor(anchor);

  if (view.focusEditor) {
    view.focusEditor = false;
    const editor = dom.messageList.querySelector('.edit-input');
    editor?.focus();
    editor?.setSelectionRange(editor.value.length, editor.value.length);
  }
  updateReadState(cache);
});

// The first message at least partly in view and its distance from the top
// of the scroller, so a render that adds or removes content above it can
// put it back in the same place. Its own height may change, as when it
// joins the group of an older message that just loaded.
function findAnchor() {
  const top = dom.messageScroller.getBoundingClientRect().top;
  for (const element of dom.messageList.children) {
    if (!element.dataset.messageId) continue;
    const rect = element.getBoundingClientRect();
    if (rect.bottom > top) return { id: element.dataset.messageId, offset: rect.top - top };
  }
  return null;
}

function restoreAnchor(anchor) {
  if (!anchor) return;
  const element = dom.messageList.querySelector(`[data-message-id="${CSS.escape(anchor.id)}"]`);
  if (!element) return;
  const offset = element.getBoundingClientRect().top - dom.messageScroller.getBoundingClientRect().top;
  dom.messageScroller.scrollTop += offset - anchor.offset;
}

function renderUnavailable(channel) {
  view.elements.clear();
  dom.messageList.replaceChildren();
  dom.loadOlder.hidden = true;
  dom.jumpToNew.hidden = true;
  dom.emptyChannel.hidden = false;
  if (!channel) dom.emptyChannel.textContent = state.layout ? 'There is no channel to show.' : 'Loading channels…';
  else dom.emptyChannel.textContent = `This channel needs the ${channel.min_tier} tier or higher.`;
}

// Keeps at most WINDOW_SIZE messages. A reader at the bottom loses the
// oldest at once. A reader scrolled up loses only messages more than a
// screen above the view, so nothing they see goes away.
function boundWindow(cache, pinned) {
  const excess = sortedMessages(cache).length - WINDOW_SIZE;
  if (excess <= 0 || cache.loadingOlder) return;
  const removable = pinned ? excess : Math.min(excess, countMessagesFarAbove());
  trimOldest(cache, removable);
}

function countMessagesFarAbove() {
  const scroller = dom.messageScroller;
  const limit = scroller.scrollTop - scroller.clientHeight;
  let count = 0;
  for (const element of dom.messageList.children) {
    if (element.offsetTop + element.offsetHeight >= limit) break;
    if (element.dataset.messageId) count += 1;
  }
  return count;
}

// Counts messages from others that arrived below a reader who scrolled up,
// and marks the first of them.
function trackNewMessages(messages, pinned, switched, lastRead) {
  const newest = messages[messages.length - 1]?.id ?? null;
  if (switched && lastRead !== null) {
    // Opening a channel marks where this device stopped reading.
    const firstUnread = messages.find((message) => !isOwnMessage(message) && compareIds(message.id, lastRead) > 0);
    view.newMarkerId = firstUnread?.id ?? null;
  }
  if (!switched && !pinned && view.newestRendered !== null) {
    for (const message of messages) {
      if (compareIds(message.id, view.newestRendered) <= 0 || isOwnMessage(message)) continue;
      view.newMarkerId ??= message.id;
      view.unseenCount += 1;
    }
  }
  if (newest !== null) view.newestRendered = newest;
}

function updateReadState(cache) {
  const atBottom = isPinnedToBottom();
  if (atBottom) view.unseenCount = 0;
  dom.jumpToNew.hidden = atBottom || view.unseenCount === 0;
  dom.jumpToNew.textContent = view.unseenCount === 1 ? '1 new message ↓' : `${view.unseenCount} new messages ↓`;
  if (atBottom && document.visibilityState === 'visible') markRead(cache);
}

// Builds the list items of a channel, reusing unchanged elements: date
// separators, the new-messages marker, stored messages by id, then local
// copies of sends that have no server message yet.
function buildElements(key, messages) {
  const previous = view.elements;
  const next = new Map();
  const elements = [];
  const reuseOrBuild = (renderKey, signature, build) => {
    const cached = previous.get(renderKey);
    const element = cached && cached.signature === signature ? cached.element : build();
    next.set(renderKey, { signature, element });
    elements.push(element);
  };

  let previousMessage = null;
  let previousDay = null;
  const addSeparatorIfNewDay = (ts) => {
    const day = dayKey(ts);
    if (day === previousDay) return;
    previousDay = day;
    previousMessage = null;
    const label = formatDay(ts);
    reuseOrBuild(`day:${day}`, label, () => buildDaySeparator(label));
  };

  for (const message of messages) {
    addSeparatorIfNewDay(message.ts);
    if (message.id === view.newMarkerId) {
      reuseOrBuild('new-marker', '', buildNewMarker);
      previousMessage = null;
    }
    const grouped = isGroupedWith(previousMessage, message);
    const entry = message.nonce && isOwnMessage(message) ? pendingSends.get(message.nonce) : undefined;
    const editing = view.editingId === message.id;
    const signature = [message.rev, grouped, editing, sendSignature(entry)].join('|');
    reuseOrBuild(`message:${message.id}`, signature, () => buildMessage(message, { grouped, entry, editing }));
    previousMessage = message;
  }

  const cache = channelCache(key);
  for (const entry of sendsInChannel(key)) {
    if (entry.messageId !== null && cache.messages.has(entry.messageId)) continue;
    addSeparatorIfNewDay(entry.createdAt);
    const local = {
      id: null,
      author: { id: state.user.id, name: state.user.name },
      content: entry.content,
      ts: entry.createdAt,
      edited_ts: null,
    };
    const grouped = isGroupedWith(previousMessage, local);
    reuseOrBuild(`send:${entry.nonce}`, `${grouped}|${sendSignature(entry)}`, () => buildMessage(local, { grouped, entry, editing: false }));
    previousMessage = local;
  }
  view.elements = next;
  return elements;
}

function isGroupedWith(previous, message) {
  return previous !== null
    && String(previous.author?.id) === String(message.author?.id)
    && Number(message.ts) - Number(previous.ts) < GROUP_WINDOW_MS;
}

function sendSignature(entry) {
  if (!entry) return '';
  return `${entry.status}|${entry.error ?? ''}|${entry.retryAt ?? ''}`;
}

// Brings the children of `parent` into the order of `elements` while moving
// as few nodes as possible, so text selections in unchanged messages survive.
function reconcileChildren(parent, elements) {
  let cursor = parent.firstChild;
  for (const element of elements) {
    if (element === cursor) {
      cursor = cursor.nextSibling;
    } else {
      parent.insertBefore(element, cursor);
    }
  }
  while (cursor) {
    const next = cursor.nextSibling;
    cursor.remove();
    cursor = next;
  }
}

function buildDaySeparator(label) {
  const item = createElement('li', 'day-separator');
  item.setAttribute('role', 'separator');
  item.append(createElement('span', '', label));
  return item;
}

function buildNewMarker() {
  const item = createElement('li', 'new-marker');
  item.setAttribute('role', 'separator');
  item.append(createElement('span', '', 'New messages'));
  return item;
}

function buildMessage(message, { grouped, entry, editing }) {
  const own = isOwnMessage(message) || message.id === null;
  const item = createElement('li', 'message');
  item.classList.toggle('own', own);
  item.classList.toggle('grouped', grouped);
  if (message.id !== null) item.dataset.messageId = message.id;
  if (!own && mentionsUser(message.content, state.user.name)) item.classList.add('mentions-me');

  if (grouped) {
    const time = buildTime(message.ts, 'message-time gutter-time');
    item.append(time);
  } else {
    const meta = createElement('div', 'message-meta');
    meta.append(createElement('span', 'author', message.author?.name ?? 'unknown'), buildTime(message.ts, 'message-time'));
    item.append(meta);
  }

  if (editing) {
    item.append(buildEditor(message));
  } else {
    const content = createElement('div', 'message-content');
    content.append(buildContent(message.content ?? '', state.user.name));
    if (message.edited_ts !== null && message.edited_ts !== undefined) {
      const edited = createElement('span', 'edited', '(edited)');
      edited.title = `Edited ${formatDateTime(message.edited_ts)}`;
      content.append(document.createTextNode(' '), edited);
    }
    item.append(content);
  }

  if (message.id !== null && !editing) {
    const actions = buildActions(message, own);
    if (actions) item.append(actions);
  }
  if (entry) item.append(buildSendState(entry));
  if (entry) item.classList.add(entry.status === 'failed' ? 'failed' : 'pending');
  return item;
}

function buildTime(ms, className) {
  const time = createElement('time', className, formatClock(ms));
  const date = new Date(Number(ms));
  if (!Number.isNaN(date.getTime())) {
    time.dateTime = date.toISOString();
    time.title = formatDateTime(ms);
  }
  return time;
}

// Authors may edit and delete their own messages; moderators and admins
// may delete any.
function buildActions(message, own) {
  const canDelete = own || isModerator();
  if (!own && !canDelete) return null;
  const actions = createElement('div', 'message-actions');
  if (own) {
    const edit = createButton('Edit', 'small-button', () => startEditing(message.id));
    edit.setAttribute('aria-label', 'Edit message');
    actions.append(edit);
  }
  if (canDelete) {
    const remove = createButton('Delete', 'small-button', () => confirmDelete(message.id));
    remove.setAttribute('aria-label', 'Delete message');
    actions.append(remove);
  }
  return actions;
}

async function confirmDelete(id) {
  const confirmed = await confirmDialog({
    title: 'Delete message',
    message: 'Delete this message for everyone? This cannot be undone.',
    confirmLabel: 'Delete',
    danger: true,
  });
  if (confirmed) deleteMessage(id);
}

function buildEditor(message) {
  const form = createElement('form', 'edit-form');
  const input = createElement('textarea', 'edit-input');
  input.value = message.content ?? '';
  input.rows = Math.min(8, input.value.split('\n').length + 1);
  input.setAttribute('aria-label', 'Edit message');
  const status = createElement('p', 'edit-status', 'Enter saves, Shift+Enter adds a line, Escape cancels.');
  const save = createElement('button', 'small-button primary', 'Save');
  save.type = 'submit';
  const buttons = createElement('div', 'edit-buttons');
  buttons.append(save, createButton('Cancel', 'small-button', stopEditing));
  form.append(input, buttons, status);

  const submit = () => {
    const content = trimLikeServer(input.value);
    const problem = contentProblem(content);
    if (problem) {
      status.textContent = problem;
      status.classList.add('error-text');
      return;
    }
    if (content !== message.content) editMessage(message.id, content);
    stopEditing();
  };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    submit();
  });
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') {
      event.preventDefault();
      stopEditing();
    } else if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  return form;
}

// Returns why the server would reject this trimmed content, or '' when it would not.
export function contentProblem(content) {
  if (content === '') return 'A message cannot be empty.';
  const length = countScalarValues(content);
  if (length > state.maxMessageChars) {
    return `The message has ${length} characters; the limit is ${state.maxMessageChars}.`;
  }
  if (hasForbiddenControl(content)) return 'The message contains a control character: only new lines and tabs are allowed.';
  return '';
}

function buildSendState(entry) {
  const box = createElement('div', 'send-state');
  if (entry.status === 'pending') {
    box.append(createElement('span', '', 'Sending…'));
    return box;
  }
  if (entry.status === 'waiting') {
    const wait = formatWait(Math.max(0, entry.retryAt - Date.now()));
    box.append(createElement('span', 'warn-text', `Sending too fast: retrying in ${wait}.`));
  } else {
    box.append(createElement('span', 'error-text', `Not sent: ${entry.error}`));
  }
  box.append(
    createButton(entry.status === 'waiting' ? 'Retry now' : 'Retry', 'small-button', () => retrySend(entry.nonce)),
    createButton('Discard', 'small-button', () => removeSend(entry.nonce)),
  );
  return box;
}

// ---------------------------------------------------------------------------
// Header

onRender('header', () => {
  const channel = selectedChannel();
  if (channel) dom.channelName.textContent = `# ${channel.name}`;
  else dom.channelName.textContent = state.layout ? 'No channel' : 'Loading channels…';
  const topic = channel?.topic ?? '';
  dom.channelTopic.textContent = topic;
  dom.channelTopic.hidden = topic === '';
  document.title = channel ? `#${channel.name} · Aura` : 'Aura';
});

// ---------------------------------------------------------------------------
// Events

export function bindMessageEvents() {
  dom.loadOlder.addEventListener('click', loadOlderMessages);
  dom.messageScroller.addEventListener('scroll', handleScroll, { passive: true });
  dom.jumpToNew.addEventListener('click', () => {
    scrollToBottom();
    invalidate('messages');
  });
  document.addEventListener('visibilitychange', () => invalidate('messages'));
}

export function forgetMessageView() {
  view.channelKey = null;
  view.elements.clear();
  view.newestRendered = null;
  view.newMarkerId = null;
  view.unseenCount = 0;
  view.editingId = null;
  dom.messageList.replaceChildren();
}

function handleScroll() {
  const key = state.selectedChannelKey;
  if (key === null || !state.user) return;
  const cache = state.channels.get(key);
  if (!cache) return;
  if (dom.messageScroller.scrollTop < LOAD_OLDER_THRESHOLD_PX && cache.hasOlder && !cache.loadingOlder) {
    loadOlderMessages();
  }
  if (isPinnedToBottom() && (!dom.jumpToNew.hidden || view.unseenCount > 0 || hasUnread(cache))) {
    invalidate('messages');
  }
}

function hasUnread(cache) {
  const newest = view.newestRendered;
  return newest !== null && cache.lastRead !== null && compareIds(newest, cache.lastRead) > 0;
}
