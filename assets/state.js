// The client's shared state and the constants several modules use.

// The server's default --max-message-chars, used until a ready frame says otherwise.
export const DEFAULT_MAX_MESSAGE_CHARS = 4000;
// The server's default --heartbeat-ms, used if a ready frame lacks a valid value.
export const DEFAULT_HEARTBEAT_MS = 4000;
// Messages per subscribe batch, history page and poll page.
export const PAGE_SIZE = 50;
// Most messages kept per channel, in memory and in the DOM, so that a tab
// left open for days stays fast. Older ones are fetched again on scroll.
export const WINDOW_SIZE = 500;

export const state = {
  user: null, // the user object of ready, user frames and /api/me; null on the auth screen
  epoch: null, // epoch of the last ready frame; a new value means the server restarted
  heartbeatMs: DEFAULT_HEARTBEAT_MS,
  maxMessageChars: DEFAULT_MAX_MESSAGE_CHARS,
  layout: null, // {version, categories: [{id, name, channels: [...]}]}
  selectedChannelKey: null, // String(channel.id) of the channel on screen
  channels: new Map(), // channel key -> channel cache, see model.js

  // Presence and typing exist only on servers whose ready frame has a
  // presence field. Until then presence is null and no list is shown.
  presence: null, // Set of online user ids, or null
  supportsTyping: false,
  typing: new Map(), // channel key -> Map(user id -> time in ms when the hint expires)
  userNames: new Map(), // user id -> name, from messages, /api/users and the own account

  connection: 'connecting', // 'connecting', 'live', 'reconnecting' or 'polling'
};

// Events between modules that must not import each other:
// 'session-expired' when the server rejects the session.
export const bus = new EventTarget();

export function emit(name, detail) {
  bus.dispatchEvent(new CustomEvent(name, { detail }));
}

export function isAdmin() {
  return state.user?.role === 'admin';
}

export function isModerator() {
  return state.user?.role === 'admin' || state.user?.role === 'moderator';
}

export function isMuted() {
  return Number(state.user?.muted_until) > Date.now();
}

export function allChannels() {
  if (!state.layout) return [];
  return state.layout.categories.flatMap((category) => category.channels ?? []);
}

export function findChannel(key) {
  if (key === null || key === undefined) return null;
  return allChannels().find((channel) => String(channel.id) === String(key)) ?? null;
}

export function selectedChannel() {
  return findChannel(state.selectedChannelKey);
}

export function canPostIn(channel) {
  return !channel.locked && (channel.post !== 'admins' || isAdmin());
}
