// The live connection: a WebSocket with heartbeats and reconnects, HTTP
// long-polling while the socket is down, and every operation that goes to
// the server over either path (subscribe, send, edit, delete, history).

import {
  state, emit, PAGE_SIZE, DEFAULT_HEARTBEAT_MS, DEFAULT_MAX_MESSAGE_CHARS,
  allChannels, findChannel, selectedChannel, isModerator,
} from './state.js';
import { dom, showNotice } from './dom.js';
import { ApiError, apiRequest, channelMessagesPath, messagePath } from './api.js';
import { isAbortError, parseJson, sleep, formatWait } from './util.js';
import { invalidate, onRender } from './render.js';
import {
  channelCache, dropChannel, expireOtherEpochs, applyChange, replaceMessages, applyHistory,
  storeMessage, oldestMessageId, channelChanged, trimHiddenChannel,
} from './model.js';
import {
  pendingSends, removeSend, markFailed, markWaiting, markPending, linkPendingSend,
} from './outbox.js';
import * as storage from './storage.js';

const POLL_LIMIT = 100;
const POLL_WAIT_SECONDS = 25;
const RECONNECT_BASE_MS = 1000;
const RECONNECT_MAX_MS = 30_000;
// Each wait is the capped exponential delay minus up to this fraction, so
// clients disconnected by a server restart do not all reconnect at once.
const RECONNECT_JITTER = 0.2;
// The server closes a socket after 2.5 heartbeat intervals without a client
// frame, so the client treats the same silence from the server as a dead socket.
const HEARTBEAT_TIMEOUT_FACTOR = 2.5;
// NOTE: the server does not send its --max-frame-bytes to clients, so this
// assumes the default. A server with a lower limit closes the socket with 1009.
const MAX_FRAME_BYTES = 65_536;
// The server relays a typing hint at most once per 3 s per user and
// channel, so the page sends no more often.
const TYPING_INTERVAL_MS = 3000;
// A typing hint is shown this long after the last one arrived.
const TYPING_SHOWN_MS = 6000;

const CLOSE_MESSAGE_TOO_BIG = 1009;
const CLOSE_ACCOUNT_ENDED = 4001;

const textEncoder = new TextEncoder();

const socketState = {
  socket: null,
  ready: false, // true between the ready frame and the socket's close
  lastFrameAt: 0, // Date.now() of the last frame from the server
  heartbeatTimer: null,
  reconnectTimer: null,
  reconnectAttempt: 0,
  lastSentNonce: null, // nonce of the last send frame, blamed when the server closes with 1009
  lost: false, // true from a socket close or failure until the next ready frame; polling runs meanwhile
  pollController: null, // AbortController of the running poll loop
  typingSentAt: new Map(), // channel key -> Date.now() of the last typing frame
};

// ---------------------------------------------------------------------------
// Lifecycle

export function startConnection() {
  setConnectionStatus('connecting');
  connectSocket();
}

// Stops every timer, socket and request of the session.
export function stopConnection() {
  const socket = socketState.socket;
  socketState.socket = null; // detaches the socket's handlers before it closes
  socketState.ready = false;
  socket?.close(1000);
  stopHeartbeat();
  clearTimeout(socketState.reconnectTimer);
  socketState.reconnectTimer = null;
  socketState.reconnectAttempt = 0;
  socketState.lost = false;
  socketState.lastSentNonce = null;
  socketState.typingSentAt.clear();
  stopPolling();
  for (const entry of pendingSends.values()) clearTimeout(entry.retryTimer);
}

export function isSocketLive() {
  return socketState.socket !== null && socketState.ready;
}

const CONNECTION_LABELS = {
  connecting: ['Connecting…', 'Opening the live connection.'],
  live: ['Live', 'Messages arrive over the live connection.'],
  reconnecting: ['Reconnecting…', 'The server cannot be reached. The page keeps trying.'],
  polling: ['Offline, polling', 'The live connection is down. Messages arrive over HTTP while the page reconnects.'],
};

function setConnectionStatus(kind) {
  state.connection = kind;
  invalidate('status');
}

onRender('status', () => {
  const [label, description] = CONNECTION_LABELS[state.connection];
  dom.connectionStatus.dataset.state = state.connection;
  dom.connectionStatus.textContent = label;
  dom.connectionStatus.title = description;
});

// ---------------------------------------------------------------------------
// Layout and channel selection

// Stores a layout from a ready or layout frame, GET /api/layout or an admin
// change, keeps the selection when the channel still exists, drops the
// caches of channels that are gone and subscribes to new readable ones.
export function applyLayout(layout) {
  if (!layout || !Array.isArray(layout.categories)) return;
  if (state.layout && Number(layout.version) < Number(state.layout.version)) return;
  const previousKey = state.selectedChannelKey;
  const wasLocked = selectedChannel()?.locked === true;
  state.layout = layout;

  const readable = new Set(allChannels().filter((channel) => !channel.locked).map((channel) => String(channel.id)));
  for (const key of [...state.channels.keys()]) {
    if (!readable.has(key)) dropChannel(key);
  }

  if (selectedChannel() === null) {
    const remembered = findChannel(storage.readJson(state.user.id, 'selected', null));
    const first = allChannels().find((channel) => !channel.locked) ?? allChannels()[0];
    state.selectedChannelKey = String((remembered ?? first)?.id ?? '') || null;
  }
  const unlocked = wasLocked && selectedChannel() && !selectedChannel().locked;
  if (state.selectedChannelKey !== previousKey || unlocked) {
    invalidate('messages', { reset: true });
    if (socketState.lost) restartPolling();
  }
  if (isSocketLive()) subscribeReadableChannels();
  invalidate('sidebar');
  invalidate('header');
  invalidate('composer');
}

export function selectChannel(key) {
  if (key === state.selectedChannelKey) return;
  state.selectedChannelKey = key;
  if (state.user) storage.writeJson(state.user.id, 'selected', key);
  invalidate('messages', { reset: true });
  invalidate('sidebar');
  invalidate('header');
  invalidate('composer');
  invalidate('typing');
  if (socketState.lost) restartPolling();
}

// ---------------------------------------------------------------------------
// WebSocket

function connectSocket() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  let socket;
  try {
    socket = new WebSocket(`${scheme}://${location.host}/ws`);
  } catch (error) {
    handleSocketLost(`could not be created (${error.message})`);
    return;
  }
  socketState.socket = socket;
  socketState.ready = false;

  // The identity checks ignore events of a socket that the page already abandoned.
  socket.addEventListener('message', (event) => {
    if (socketState.socket === socket) handleSocketMessage(event.data);
  });
  socket.addEventListener('close', (event) => {
    if (socketState.socket !== socket) return;
    if (event.code === CLOSE_MESSAGE_TOO_BIG) failLastSendAsTooLarge();
    if (event.code === CLOSE_ACCOUNT_ENDED) {
      socketState.socket = null;
      emit('session-expired', 'Your account was disabled or deleted.');
      return;
    }
    handleSocketLost(`closed with code ${event.code}`);
  });
}

// Sends a frame on the live socket. Returns false, without sending, when the
// frame is larger than the server accepts.
function sendFrame(frame) {
  const text = JSON.stringify(frame);
  if (textEncoder.encode(text).length > MAX_FRAME_BYTES) return false;
  socketState.socket.send(text);
  return true;
}

function handleSocketMessage(data) {
  socketState.lastFrameAt = Date.now();
  const frame = typeof data === 'string' ? parseJson(data) : null;
  if (!frame || typeof frame.op !== 'string') {
    console.warn('Ignored a WebSocket frame that is not a JSON object with "op".');
    return;
  }
  switch (frame.op) {
    case 'ready': handleReady(frame); break;
    case 'subscribed': handleSubscribed(frame); break;
    case 'message': handleMessageEvent(frame.message); break;
    case 'ack': handleAck(frame); break;
    case 'history': handleHistory(frame); break;
    case 'error': handleErrorFrame(frame); break;
    case 'heartbeat_ack': break; // handleSocketMessage already recorded the time
    case 'layout': applyLayout(frame.layout); break;
    case 'user': handleUserFrame(frame); break;
    case 'unsubscribed': handleUnsubscribed(frame); break;
    case 'presence': handlePresence(frame); break;
    case 'typing': handleTyping(frame); break;
    default: console.warn(`Ignored a WebSocket frame with unknown op "${frame.op}".`);
  }
}

function handleReady(frame) {
  if (frame.epoch !== state.epoch) expireOtherEpochs(frame.epoch);
  state.epoch = frame.epoch;
  if (frame.user) setUser(frame.user);
  state.heartbeatMs = Number(frame.heartbeat_ms) > 0 ? Number(frame.heartbeat_ms) : DEFAULT_HEARTBEAT_MS;
  state.maxMessageChars = Number(frame.max_message_chars) > 0
    ? Number(frame.max_message_chars)
    : DEFAULT_MAX_MESSAGE_CHARS;
  // Servers without presence send no presence field; they also know no
  // typing op, so the page sends none.
  state.supportsTyping = frame.presence !== undefined;
  state.presence = Array.isArray(frame.presence?.online) ? new Set(frame.presence.online.map(String)) : null;
  socketState.ready = true;
  socketState.reconnectAttempt = 0;
  socketState.lost = false;
  for (const cache of state.channels.values()) cache.subscribed = false;
  stopPolling();
  startHeartbeat();

  setConnectionStatus('live');
  applyLayout(frame.layout);
  subscribeReadableChannels();
  resendPendingSends();
  if (state.presence) fetchUserNames();
  invalidate('presence');
  invalidate('composer');
}

function setUser(user) {
  state.user = user;
  state.userNames.set(String(user.id), user.name);
  invalidate('user');
  invalidate('composer');
  invalidate('sidebar');
  invalidate('messages', { rebuild: true });
}

function handleUserFrame(frame) {
  if (!frame.user) return;
  const roleChanged = frame.user.role !== state.user?.role;
  setUser(frame.user);
  if (roleChanged && state.presence) fetchUserNames();
}

// Subscribes every readable channel that has no subscription on this socket,
// so unread counts and mentions stay current in every channel.
function subscribeReadableChannels() {
  for (const channel of allChannels()) {
    if (channel.locked) continue;
    const cache = channelCache(String(channel.id));
    if (cache.subscribed) continue;
    cache.subscribed = true;
    cache.subscribeAfter = cache.lastRev;
    sendFrame({ op: 'subscribe', channel: channel.id, after: cache.lastRev, limit: PAGE_SIZE });
  }
}

function handleSubscribed(frame) {
  const key = String(frame.channel);
  if (!findChannel(key)) return;
  const cache = channelCache(key);
  const messages = frame.messages ?? [];

  if (cache.subscribeAfter === null || frame.gap) {
    // With no known rev, or when changes were skipped, the cached messages
    // may be stale, so the batch replaces the view.
    replaceMessages(cache, messages, Boolean(frame.gap) || messages.length >= PAGE_SIZE);
    channelChanged(key, { rebuild: true });
  } else {
    for (const message of messages) applyChange(cache, message);
    cache.loaded = true;
    channelChanged(key);
  }
  for (const message of messages) linkPendingSend(message);
  trimHiddenChannel(cache);
}

function handleMessageEvent(message) {
  if (!message || message.channel === undefined) return;
  const key = String(message.channel);
  if (!findChannel(key)) return;
  const cache = channelCache(key);
  applyChange(cache, message);
  linkPendingSend(message);
  if (message.author?.id) clearTyping(key, String(message.author.id));
  trimHiddenChannel(cache);
  channelChanged(key);
}

function handleAck(frame) {
  const entry = pendingSends.get(frame.nonce);
  if (!entry) return;
  const cache = channelCache(entry.channelKey);
  if (!cache.messages.has(frame.id)) {
    // The live event is missing when the channel was unsubscribed before it
    // arrived. A local copy keeps the text on screen until the next subscribe
    // returns the stored message, which replaces it because its rev is not lower.
    storeMessage(cache, localCopyOfSentMessage(entry, frame));
  }
  removeSend(frame.nonce);
  channelChanged(entry.channelKey);
}

function localCopyOfSentMessage(entry, ack) {
  return {
    id: ack.id,
    rev: ack.rev,
    channel: entry.channelId,
    author: { id: state.user.id, name: state.user.name },
    content: entry.content,
    ts: entry.createdAt,
    edited_ts: null,
    nonce: entry.nonce,
    deleted: false,
  };
}

function handleHistory(frame) {
  const key = String(frame.channel);
  if (!findChannel(key)) return;
  const cache = channelCache(key);
  applyHistory(cache, frame.messages ?? [], frame.has_more);
  channelChanged(key);
}

function handleErrorFrame(frame) {
  const message = frame.message || `The server reported the error "${frame.code}".`;
  const entry = frame.nonce ? pendingSends.get(frame.nonce) : undefined;
  if (entry) {
    handleSendError(entry, frame.code, message, Number(frame.retry_after_ms) || null);
    return;
  }
  // An error without a nonce may be the response to a history request, so
  // "Load older" becomes usable again.
  for (const cache of state.channels.values()) cache.loadingOlder = false;
  showNotice(message);
  invalidate('messages');
}

// The server ended a subscription because the channel was deleted or the
// user may no longer read it, so its cached messages are dropped.
function handleUnsubscribed(frame) {
  const key = String(frame.channel);
  dropChannel(key);
  if (key === state.selectedChannelKey) {
    showNotice(frame.reason === 'deleted'
      ? 'This channel was deleted.'
      : 'You no longer have access to this channel.');
    invalidate('messages', { reset: true });
  }
  invalidate('sidebar');
}

function handlePresence(frame) {
  // A frame with "full" replaces the list: the server sends one after this
  // connection missed a delta while its queue was under pressure.
  if (!state.presence || frame.full) state.presence = new Set();
  for (const id of frame.online ?? []) state.presence.add(String(id));
  for (const id of frame.offline ?? []) state.presence.delete(String(id));
  if ([...state.presence].some((id) => !state.userNames.has(id))) fetchUserNames();
  invalidate('presence');
}

function handleTyping(frame) {
  const key = String(frame.channel);
  // The typist arrives as {id, name}, like a message author.
  const user = String(frame.user?.id ?? frame.user);
  if (typeof frame.user?.name === 'string') state.userNames.set(user, frame.user.name);
  if (state.user && user === String(state.user.id)) return;
  let typists = state.typing.get(key);
  if (!typists) {
    typists = new Map();
    state.typing.set(key, typists);
  }
  typists.set(user, Date.now() + TYPING_SHOWN_MS);
  if (key === state.selectedChannelKey) invalidate('typing');
  setTimeout(() => invalidate('typing'), TYPING_SHOWN_MS + 50);
}

function clearTyping(key, user) {
  if (state.typing.get(key)?.delete(user) && key === state.selectedChannelKey) invalidate('typing');
}

// Sends a typing hint for a channel, at most once per TYPING_INTERVAL_MS.
export function sendTyping(channel) {
  if (!state.supportsTyping || !isSocketLive()) return;
  const key = String(channel.id);
  const now = Date.now();
  if (now - (socketState.typingSentAt.get(key) ?? 0) < TYPING_INTERVAL_MS) return;
  socketState.typingSentAt.set(key, now);
  sendFrame({ op: 'typing', channel: channel.id });
}

// Names for the presence list. Moderators and admins may list the users;
// members know the names of the authors of the messages they hold.
let userNamesRequested = 0;
async function fetchUserNames() {
  if (!isModerator()) return;
  const now = Date.now();
  if (now - userNamesRequested < 10_000) return;
  userNamesRequested = now;
  try {
    const data = await apiRequest('GET', '/api/users');
    for (const user of data?.users ?? []) state.userNames.set(String(user.id), user.name);
    invalidate('presence');
  } catch (error) {
    console.info(`Listing users for the presence list failed: ${error.message}`);
  }
}

function handleSocketLost(reason) {
  socketState.socket = null;
  socketState.ready = false;
  stopHeartbeat();
  for (const cache of state.channels.values()) {
    cache.loadingOlder = false;
    cache.subscribed = false;
  }

  const delay = scheduleReconnect();
  console.info(`WebSocket ${reason}. Reconnecting in ${Math.round(delay)} ms.`);
  // While polling works the status stays "polling" across failed reconnects.
  if (state.connection !== 'polling') setConnectionStatus('reconnecting');
  if (!socketState.lost) {
    socketState.lost = true;
    startPolling();
  }
  invalidate('messages');
  invalidate('presence');
}

// A socket that stops sending frames (a half-open TCP connection) may take
// minutes to fire close, so the page closes it and reconnects.
function dropDeadSocket() {
  const socket = socketState.socket;
  handleSocketLost('stopped sending frames');
  socket.close();
}

// The server closes with 1009 when a frame is over its size limit. The last
// send frame is the likely cause, and resending it after the reconnect would
// close the socket again, so it is marked failed instead.
function failLastSendAsTooLarge() {
  const entry = pendingSends.get(socketState.lastSentNonce);
  if (entry && entry.status === 'pending') markFailed(entry, 'The message is too large for the server.');
}

function startHeartbeat() {
  stopHeartbeat();
  socketState.lastFrameAt = Date.now();
  socketState.heartbeatTimer = setInterval(sendHeartbeat, state.heartbeatMs);
}

function stopHeartbeat() {
  clearInterval(socketState.heartbeatTimer);
  socketState.heartbeatTimer = null;
}

function sendHeartbeat() {
  if (!isSocketLive()) return;
  if (Date.now() - socketState.lastFrameAt > state.heartbeatMs * HEARTBEAT_TIMEOUT_FACTOR) {
    dropDeadSocket();
    return;
  }
  sendFrame({ op: 'heartbeat' });
}

// 1 s, 2 s, 4 s, … up to 30 s, each minus up to 20 % jitter.
function reconnectDelay(attempt) {
  const ceiling = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** Math.min(attempt, 20));
  return ceiling * (1 - Math.random() * RECONNECT_JITTER);
}

// Schedules the next connection attempt and returns its delay in ms.
function scheduleReconnect() {
  clearTimeout(socketState.reconnectTimer);
  const delay = reconnectDelay(socketState.reconnectAttempt);
  socketState.reconnectAttempt += 1;
  socketState.reconnectTimer = setTimeout(() => {
    socketState.reconnectTimer = null;
    connectSocket();
  }, delay);
  return delay;
}

// The browser reports that the network is back, so waiting out the backoff
// would only delay the reconnect.
export function reconnectNow() {
  if (state.user === null || socketState.socket !== null) return;
  clearTimeout(socketState.reconnectTimer);
  socketState.reconnectTimer = null;
  socketState.reconnectAttempt = 0;
  connectSocket();
  if (socketState.lost) restartPolling();
}

// ---------------------------------------------------------------------------
// HTTP long-polling while the socket is down

function startPolling() {
  if (socketState.pollController) return;
  const controller = new AbortController();
  socketState.pollController = controller;
  runPollLoop(controller.signal).finally(() => {
    if (socketState.pollController === controller) socketState.pollController = null;
  });
}

function stopPolling() {
  socketState.pollController?.abort();
  socketState.pollController = null;
}

function restartPolling() {
  stopPolling();
  startPolling();
}

// Polls the selected channel until the signal aborts. Each request
// long-polls, so the loop needs no interval timer. Failed requests back off
// like reconnects. Other channels catch up when the socket is back.
async function runPollLoop(signal) {
  let failures = 0;
  let hasMore = false;
  while (!signal.aborted) {
    try {
      const result = await pollOnce(signal, hasMore ? 0 : POLL_WAIT_SECONDS);
      if (result === 'idle') return;
      hasMore = result === 'has_more';
      failures = 0;
      if (!isSocketLive()) setConnectionStatus('polling');
      resendPendingSends();
    } catch (error) {
      if (signal.aborted || isAbortError(error)) return;
      if (error.status === 401) {
        emit('session-expired', 'Your session has ended. Log in again.');
        return;
      }
      if (error.status !== 0) showNotice(error.message);
      if (!isSocketLive()) setConnectionStatus('reconnecting');
      failures += 1;
      hasMore = false;
      try {
        await sleep(reconnectDelay(failures - 1), signal);
      } catch {
        return;
      }
    }
  }
}

// Runs one poll request for the selected channel. Returns 'idle' when there
// is no channel to poll, 'has_more' when more changes are ready, else 'done'.
// NOTE: HTTP responses carry no epoch, so a message that was lost in a server
// restart stays on screen until the socket reconnects and ready shows the new epoch.
async function pollOnce(signal, waitSeconds) {
  if (!state.layout) applyLayout(await apiRequest('GET', '/api/layout', { signal }));
  const channel = selectedChannel();
  if (!channel || channel.locked) return 'idle';

  const key = String(channel.id);
  const cache = channelCache(key);
  const path = channelMessagesPath(channel.id);

  if (cache.lastRev === null) {
    const page = await apiRequest('GET', `${path}?limit=${PAGE_SIZE}`, { signal });
    replaceMessages(cache, page.messages ?? [], Boolean(page.has_more));
    // An empty channel has no rev yet. Rev 0 is below every real rev, so the
    // next request long-polls instead of fetching the newest page again.
    if (cache.lastRev === null) cache.lastRev = '0';
    for (const message of page.messages ?? []) linkPendingSend(message);
    channelChanged(key, { rebuild: true });
    return 'done';
  }

  const query = `after=${encodeURIComponent(cache.lastRev)}&limit=${POLL_LIMIT}&wait=${waitSeconds}`;
  const page = await apiRequest('GET', `${path}?${query}`, { signal });
  for (const message of page.messages ?? []) {
    applyChange(cache, message);
    linkPendingSend(message);
  }
  channelChanged(key);
  return page.has_more ? 'has_more' : 'done';
}

// ---------------------------------------------------------------------------
// Sending, editing and deleting

// Sends an outbox entry over the socket, or over HTTP while the socket is down.
export function transmitSend(entry) {
  if (isSocketLive()) sendOverSocket(entry);
  else postOverHttp(entry);
}

function sendOverSocket(entry) {
  const frame = { op: 'send', channel: entry.channelId, content: entry.content, nonce: entry.nonce };
  if (!sendFrame(frame)) {
    markFailed(entry, 'The message is too large to send.');
    return;
  }
  socketState.lastSentNonce = entry.nonce;
}

async function postOverHttp(entry) {
  if (entry.httpInFlight) return;
  entry.httpInFlight = true;
  try {
    const body = { content: entry.content, nonce: entry.nonce };
    const data = await apiRequest('POST', channelMessagesPath(entry.channelId), { body });
    // The entry is gone when a socket ack arrived first, the user discarded it
    // or logged out, so there is nothing left to update.
    if (pendingSends.get(entry.nonce) !== entry) return;
    // The response does not move lastRev, because older changes may still be
    // on their way through the poll.
    if (data?.message && findChannel(entry.channelKey)) storeMessage(channelCache(entry.channelKey), data.message);
    removeSend(entry.nonce);
    channelChanged(entry.channelKey);
  } catch (error) {
    if (pendingSends.get(entry.nonce) !== entry) return;
    if (error.status === 401) {
      emit('session-expired', 'Your session has ended. Log in again.');
    } else if (error.status !== 0) {
      handleSendError(entry, error.code, error.message, error.retryAfterMs);
    }
    // Without a response the send stays pending, and the next successful poll
    // or reconnect sends it again.
  } finally {
    entry.httpInFlight = false;
  }
}

// A rate-limited send waits and goes out again by itself; other errors wait
// for the user's retry or discard.
function handleSendError(entry, code, message, retryAfterMs) {
  if (code === 'rate_limited') {
    const waitMs = retryAfterMs ?? 1000;
    markWaiting(entry, Date.now() + waitMs);
    clearTimeout(entry.retryTimer);
    entry.retryTimer = setTimeout(() => {
      if (pendingSends.get(entry.nonce) !== entry || entry.status !== 'waiting') return;
      markPending(entry);
      transmitSend(entry);
    }, waitMs);
    showNotice(`You are sending too fast. The message goes out again in ${formatWait(waitMs)}.`);
    return;
  }
  markFailed(entry, message);
}

// Sends every unacknowledged message again with its original nonce. Failed
// and rate-limited sends wait for the user or their timer.
function resendPendingSends() {
  for (const entry of pendingSends.values()) {
    if (entry.status === 'pending') transmitSend(entry);
  }
}

export function retrySend(nonce) {
  const entry = pendingSends.get(nonce);
  if (!entry) return;
  clearTimeout(entry.retryTimer);
  markPending(entry);
  transmitSend(entry);
}

function findCachedMessage(id) {
  for (const cache of state.channels.values()) {
    const message = cache.messages.get(id);
    if (message) return { cache, message };
  }
  return null;
}

// Changes the content of an own message. Errors are shown as a notice.
export async function editMessage(id, content) {
  const found = findCachedMessage(id);
  if (!found || found.message.deleted) return;
  if (isSocketLive()) {
    if (!sendFrame({ op: 'edit', id, content })) showNotice('The edited message is too large to send.');
    return;
  }
  try {
    const data = await apiRequest('PATCH', messagePath(id), { body: { content } });
    if (data?.message) storeMessage(found.cache, data.message);
    channelChanged(found.cache.key);
  } catch (error) {
    handleRequestError(error);
  }
}

export async function deleteMessage(id) {
  const found = findCachedMessage(id);
  if (!found || found.message.deleted) return;
  if (isSocketLive()) {
    sendFrame({ op: 'delete', id });
    return;
  }
  try {
    // The response carries the tombstone. It does not move lastRev, because
    // older changes may still be on their way through the poll.
    const data = await apiRequest('DELETE', messagePath(id));
    if (data?.message) storeMessage(found.cache, data.message);
    channelChanged(found.cache.key);
  } catch (error) {
    handleRequestError(error);
  }
}

export function handleRequestError(error) {
  if (error.status === 401) emit('session-expired', 'Your session has ended. Log in again.');
  else showNotice(error.message);
}

// Fetches the page of messages before the oldest one held for the selected
// channel. The message view keeps the reader's place when it arrives.
export async function loadOlderMessages() {
  const channel = selectedChannel();
  if (!channel || channel.locked) return;
  const key = String(channel.id);
  const cache = channelCache(key);
  const before = oldestMessageId(cache);
  if (cache.loadingOlder || before === null || !cache.hasOlder) return;

  cache.loadingOlder = true;
  invalidate('messages');
  if (isSocketLive()) {
    sendFrame({ op: 'history', channel: channel.id, before, limit: PAGE_SIZE });
    return;
  }
  try {
    const query = `before=${encodeURIComponent(before)}&limit=${PAGE_SIZE}`;
    const page = await apiRequest('GET', `${channelMessagesPath(channel.id)}?${query}`);
    if (state.channels.get(key) !== cache) return;
    applyHistory(cache, page.messages ?? [], page.has_more);
    channelChanged(key);
  } catch (error) {
    cache.loadingOlder = false;
    invalidate('messages');
    if (!(error instanceof ApiError) || error.status !== 0) handleRequestError(error);
  }
}
