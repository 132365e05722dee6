// Channel caches: the messages the page holds per channel, the last rev
// seen, read markers and unread counts.
//
// One cache per channel. `messages` maps message id to the newest version
// seen, tombstones included, so that an older copy arriving late cannot
// bring a deleted message back. `lastRev` is the highest rev received in rev
// order (subscribe batches, live events, polling) and is where a resume
// starts. `epoch` is the server epoch that lastRev belongs to.

import { state, WINDOW_SIZE } from './state.js';
import { compareIds } from './util.js';
import { invalidate } from './render.js';
import { mentionsUser } from './richtext.js';
import * as storage from './storage.js';

// Delay before a changed channel is written to localStorage, so a burst of
// messages costs one write.
const CACHE_SAVE_DELAY_MS = 1000;

let readMarkers = {}; // channel key -> id of the newest message read on this device
const saveTimers = new Map(); // channel key -> timeout id

function createChannelCache(key) {
  return {
    key,
    messages: new Map(),
    lastRev: null,
    epoch: null,
    loaded: false, // true once messages came from the server or the stored cache
    hasOlder: false,
    loadingOlder: false,
    subscribeAfter: null, // the `after` of the last subscribe sent for this channel
    subscribed: false, // a subscribe was sent on the current socket
    lastRead: readMarkers[key] ?? null,
  };
}

// Loads the read markers of the logged-in user; called once per login.
export function loadDeviceState() {
  readMarkers = storage.readJson(state.user.id, 'read', {});
  if (typeof readMarkers !== 'object' || Array.isArray(readMarkers)) readMarkers = {};
}

export function forgetDeviceState() {
  readMarkers = {};
  for (const timer of saveTimers.values()) clearTimeout(timer);
  saveTimers.clear();
}

// Returns the cache of a channel, creating it from localStorage when this
// device saved the channel before, so a reload shows it at once.
export function channelCache(key) {
  let cache = state.channels.get(key);
  if (cache) return cache;
  cache = createChannelCache(key);
  const stored = state.user ? storage.loadChannelCache(state.user.id, key) : null;
  if (stored) {
    for (const message of stored.messages) {
      if (message && typeof message.id === 'string' && typeof message.rev === 'string') {
        cache.messages.set(message.id, message);
        learnAuthor(message);
      }
    }
    cache.lastRev = stored.lastRev;
    cache.epoch = stored.epoch;
    cache.hasOlder = Boolean(stored.hasOlder);
    cache.loaded = true;
  }
  state.channels.set(key, cache);
  return cache;
}

// Forgets a channel that was deleted or became unreadable.
export function dropChannel(key) {
  state.channels.delete(key);
  clearTimeout(saveTimers.get(key));
  saveTimers.delete(key);
  if (state.user) storage.removeChannelCache(state.user.id, key);
}

// On a new epoch every cache from another epoch reloads its recent history:
// a message seen live before a crash may never have reached disk. The
// messages stay on screen until the fresh batch replaces them.
export function expireOtherEpochs(epoch) {
  for (const cache of state.channels.values()) {
    if (cache.epoch !== epoch) cache.lastRev = null;
  }
}

function recordRev(cache, rev) {
  if (cache.lastRev === null || compareIds(rev, cache.lastRev) > 0) cache.lastRev = rev;
  cache.epoch = state.epoch;
}

// Remembers author names for the presence list, which shows only the names
// the page has seen.
function learnAuthor(message) {
  const id = message.author?.id;
  const name = message.author?.name;
  if (!id || !name || state.userNames.get(String(id)) === name) return;
  state.userNames.set(String(id), name);
  if (state.presence?.has(String(id))) invalidate('presence');
}

// Keeps the version with the highest rev, because the same message can
// arrive twice: in an HTTP response and a poll, or in a resubscribe batch.
export function storeMessage(cache, message) {
  const existing = cache.messages.get(message.id);
  if (existing && compareIds(existing.rev, message.rev) > 0) return;
  cache.messages.set(message.id, message);
  learnAuthor(message);
}

export function oldestMessageId(cache) {
  let oldest = null;
  for (const [id, message] of cache.messages) {
    if (message.deleted) continue;
    if (oldest === null || compareIds(id, oldest) < 0) oldest = id;
  }
  return oldest;
}

export function newestMessageId(cache) {
  let newest = null;
  for (const [id, message] of cache.messages) {
    if (message.deleted) continue;
    if (newest === null || compareIds(id, newest) > 0) newest = id;
  }
  return newest;
}

// Live messages of a channel, oldest first.
export function sortedMessages(cache) {
  return [...cache.messages.values()]
    .filter((message) => !message.deleted)
    .sort((a, b) => compareIds(a.id, b.id));
}

// Applies one change received in rev order: a subscribe batch without gap,
// a live event or a poll result.
export function applyChange(cache, message) {
  recordRev(cache, message.rev);
  // An edit or delete of a message older than the loaded window would show
  // up detached from its neighbours. Loading older messages fetches it in
  // its current state.
  const oldest = oldestMessageId(cache);
  const outsideWindow = cache.hasOlder && oldest !== null && compareIds(message.id, oldest) < 0;
  if (outsideWindow && !cache.messages.has(message.id)) return;
  storeMessage(cache, message);
}

// Replaces the cache with a batch that starts a fresh view: the newest
// messages, or the newest changes after a gap.
export function replaceMessages(cache, messages, hasOlder) {
  cache.messages.clear();
  cache.lastRev = null;
  for (const message of messages) {
    recordRev(cache, message.rev);
    storeMessage(cache, message);
  }
  cache.hasOlder = hasOlder;
  cache.loaded = true;
  // Without a read marker on this device, what was there before counts as read.
  if (cache.lastRead === null) cache.lastRead = newestMessageId(cache) ?? '0';
}

// History is ordered by id, not by rev, so it does not move lastRev.
export function applyHistory(cache, messages, hasMore) {
  for (const message of messages) storeMessage(cache, message);
  cache.hasOlder = Boolean(hasMore);
  cache.loadingOlder = false;
}

// Drops the `count` oldest messages, and tombstones older than what is
// left, to keep the window bounded.
export function trimOldest(cache, count) {
  if (count <= 0) return;
  const live = sortedMessages(cache);
  const dropped = live.slice(0, count);
  for (const message of dropped) cache.messages.delete(message.id);
  const oldest = live[count]?.id ?? null;
  for (const [id, message] of cache.messages) {
    if (message.deleted && (oldest === null || compareIds(id, oldest) < 0)) cache.messages.delete(id);
  }
  if (dropped.length > 0) cache.hasOlder = true;
}

// Bounds a channel that is not on screen. The message view bounds the
// selected one itself, so that it never removes a message in view.
export function trimHiddenChannel(cache) {
  if (cache.key === state.selectedChannelKey) return;
  const excess = sortedMessages(cache).length - WINDOW_SIZE;
  if (excess > 0) trimOldest(cache, excess);
}

export function isOwnMessage(message) {
  return Boolean(message.author && state.user) && String(message.author.id) === String(state.user.id);
}

// Whether a message mentions the user, remembered per message object
// because the sidebar asks again on every change. An edit stores a new object.
const mentionCache = new WeakMap(); // message -> {name, mentions}

function mentionsMe(message) {
  const name = state.user?.name;
  const cached = mentionCache.get(message);
  if (cached && cached.name === name) return cached.mentions;
  const mentions = mentionsUser(message.content, name);
  mentionCache.set(message, { name, mentions });
  return mentions;
}

// Unread messages from others after the device's read marker, and how many
// of them mention the user.
export function unreadCounts(cache) {
  let unread = 0;
  let mentions = 0;
  if (cache.lastRead === null) return { unread, mentions };
  for (const message of cache.messages.values()) {
    if (message.deleted || isOwnMessage(message) || compareIds(message.id, cache.lastRead) <= 0) continue;
    unread += 1;
    if (mentionsMe(message)) mentions += 1;
  }
  return { unread, mentions };
}

// Moves the read marker to the newest message of the channel.
export function markRead(cache) {
  const newest = newestMessageId(cache);
  if (newest === null || (cache.lastRead !== null && compareIds(newest, cache.lastRead) <= 0)) return;
  cache.lastRead = newest;
  readMarkers[cache.key] = newest;
  storage.writeJson(state.user.id, 'read', readMarkers);
  invalidate('sidebar');
}

// Marks a channel as changed: its views redraw and its stored copy is
// written a moment later.
export function channelChanged(key, renderOptions = {}) {
  invalidate('sidebar');
  if (key === state.selectedChannelKey) invalidate('messages', renderOptions);
  scheduleCacheSave(key);
}

function scheduleCacheSave(key) {
  if (saveTimers.has(key) || !state.user) return;
  const userId = state.user.id;
  saveTimers.set(key, setTimeout(() => {
    saveTimers.delete(key);
    const cache = state.channels.get(key);
    if (!cache || !state.user || state.user.id !== userId) return;
    storage.saveChannelCache(userId, key, {
      epoch: cache.epoch,
      lastRev: cache.lastRev,
      hasOlder: cache.hasOlder,
      messages: sortedMessages(cache),
    });
  }, CACHE_SAVE_DELAY_MS));
}
