// Per-device storage in localStorage: the outbox, read markers, collapsed
// categories, the selected channel and recent messages per channel.
//
// Every key starts with `aura.v1.<user id>.`, so accounts on one browser do
// not mix. Storage may be missing (private modes) or full: reads then return
// the fallback, and writes make room by dropping cached messages or give up,
// because the server holds every message and the page works without a cache.

import { parseJson } from './util.js';

// Newest messages kept per cached channel.
const CACHED_MESSAGES = 50;
// Most channels with cached messages; the least recently written go first.
const CACHED_CHANNELS = 20;
// Upper bound of one channel's cache entry in UTF-16 code units (about
// 2 bytes each), so a few channels of long messages cannot fill the quota.
const CACHE_ENTRY_MAX_CHARS = 120_000;

let warnedAboutQuota = false;

function storage() {
  try {
    return window.localStorage;
  } catch {
    return null; // access throws when the browser blocks storage
  }
}

function prefix(userId) {
  return `aura.v1.${userId}.`;
}

export function readJson(userId, name, fallback) {
  try {
    const value = parseJson(storage()?.getItem(prefix(userId) + name) ?? null);
    return value ?? fallback;
  } catch {
    return fallback;
  }
}

// Writes a value and returns whether it was stored. When the quota is
// exceeded, cached messages are dropped, oldest first, and the write is
// tried again.
export function writeJson(userId, name, value) {
  const store = storage();
  if (!store) return false;
  const key = prefix(userId) + name;
  const text = JSON.stringify(value);
  for (let attempt = 0; attempt <= CACHED_CHANNELS; attempt += 1) {
    try {
      store.setItem(key, text);
      return true;
    } catch (error) {
      if (!isQuotaError(error) || !evictOldestCache(userId, key)) break;
    }
  }
  if (!warnedAboutQuota) {
    warnedAboutQuota = true;
    console.warn(`Browser storage is full or blocked: ${name} was not saved.`);
  }
  return false;
}

export function removeKey(userId, name) {
  try {
    storage()?.removeItem(prefix(userId) + name);
  } catch {
    // Nothing to do when storage is blocked.
  }
}

// Removes everything stored for a user, on logout.
export function clearUserData(userId) {
  const store = storage();
  if (!store) return;
  try {
    const keys = [];
    for (let index = 0; index < store.length; index += 1) {
      const key = store.key(index);
      if (key?.startsWith(prefix(userId))) keys.push(key);
    }
    for (const key of keys) store.removeItem(key);
  } catch {
    // Nothing to do when storage is blocked.
  }
}

function isQuotaError(error) {
  return error instanceof DOMException
    && (error.name === 'QuotaExceededError' || error.name === 'NS_ERROR_DOM_QUOTA_REACHED');
}

// Lists the user's cached channels as [{key, savedAt}], oldest first.
function cachedChannels(userId) {
  const store = storage();
  const start = `${prefix(userId)}cache.`;
  const entries = [];
  if (!store) return entries;
  for (let index = 0; index < store.length; index += 1) {
    const key = store.key(index);
    if (!key?.startsWith(start)) continue;
    const savedAt = Number(parseJson(store.getItem(key))?.savedAt) || 0;
    entries.push({ key, savedAt });
  }
  return entries.sort((a, b) => a.savedAt - b.savedAt);
}

// Drops the oldest channel cache other than `keep`; false when none is left.
function evictOldestCache(userId, keep) {
  const victim = cachedChannels(userId).find((entry) => entry.key !== keep);
  if (!victim) return false;
  storage().removeItem(victim.key);
  return true;
}

// Saves the newest messages of a channel with the rev and epoch they are
// current to. Deleted messages are left out: they are gone from the view.
export function saveChannelCache(userId, channelKey, { epoch, lastRev, hasOlder, messages }) {
  if (lastRev === null || epoch === null) return;
  const live = messages.filter((message) => !message.deleted);
  let kept = live.slice(-CACHED_MESSAGES);
  let entry = { epoch, lastRev, hasOlder: hasOlder || kept.length < live.length, savedAt: Date.now(), messages: kept };
  while (kept.length > 0 && JSON.stringify(entry).length > CACHE_ENTRY_MAX_CHARS) {
    kept = kept.slice(Math.ceil(kept.length / 4));
    entry = { ...entry, hasOlder: true, messages: kept };
  }
  writeJson(userId, `cache.${channelKey}`, entry);

  const caches = cachedChannels(userId);
  for (const extra of caches.slice(0, Math.max(0, caches.length - CACHED_CHANNELS))) {
    storage()?.removeItem(extra.key);
  }
}

export function loadChannelCache(userId, channelKey) {
  const entry = readJson(userId, `cache.${channelKey}`, null);
  if (!entry || !Array.isArray(entry.messages) || typeof entry.lastRev !== 'string') return null;
  return entry;
}

export function removeChannelCache(userId, channelKey) {
  removeKey(userId, `cache.${channelKey}`);
}
