// Aura web client. It logs in over the HTTP API, receives live events over a
// WebSocket, and long-polls the HTTP API while the socket is down.
// User-provided text reaches the DOM only through textContent, never as HTML.

const SUBSCRIBE_LIMIT = 50;
const HISTORY_LIMIT = 50;
const POLL_LIMIT = 100;
const POLL_WAIT_SECONDS = 25;
const RECONNECT_BASE_MS = 1000;
const RECONNECT_MAX_MS = 30_000;
// Each wait is the capped exponential delay minus up to this fraction, so
// clients disconnected by a server restart do not all reconnect at once.
const RECONNECT_JITTER = 0.2;
// The server's default --heartbeat-ms, used if a ready frame lacks a valid value.
const DEFAULT_HEARTBEAT_MS = 4000;
// The server closes a socket after 2.5 heartbeat intervals without a client
// frame, so the client treats the same silence from the server as a dead socket.
const HEARTBEAT_TIMEOUT_FACTOR = 2.5;
// NOTE: the server does not send its --max-frame-bytes to clients, so this
// assumes the default. A server with a lower limit closes the socket with 1009.
const MAX_FRAME_BYTES = 65_536;
// Distance in px from the bottom within which the message list counts as
// scrolled to the bottom and follows new messages.
const PINNED_THRESHOLD_PX = 48;

const CLOSE_MESSAGE_TOO_BIG = 1009;

const textEncoder = new TextEncoder();

const dom = {
  loadingView: byId('loading-view'),
  authView: byId('auth-view'),
  loginSection: byId('login-section'),
  loginForm: byId('login-form'),
  registerSection: byId('register-section'),
  registerForm: byId('register-form'),
  showRegister: byId('show-register'),
  showLogin: byId('show-login'),
  authError: byId('auth-error'),
  chatView: byId('chat-view'),
  sidebarToggle: byId('sidebar-toggle'),
  connectionStatus: byId('connection-status'),
  currentUser: byId('current-user'),
  logoutButton: byId('logout-button'),
  sidebar: byId('sidebar'),
  channelName: byId('channel-name'),
  channelTopic: byId('channel-topic'),
  notice: byId('notice'),
  noticeText: byId('notice-text'),
  noticeDismiss: byId('notice-dismiss'),
  messageScroller: byId('message-scroller'),
  loadOlder: byId('load-older'),
  emptyChannel: byId('empty-channel'),
  messageList: byId('message-list'),
  composer: byId('composer'),
  composerInput: byId('composer-input'),
  sendButton: byId('send-button'),
  composerReason: byId('composer-reason'),
};

const state = {
  user: null, // {id, name, role} of the logged-in user, or null on the auth screen
  epoch: null, // epoch of the last ready frame; a new value means the server restarted
  heartbeatMs: DEFAULT_HEARTBEAT_MS,
  layout: null, // {version, categories: [{id, name, channels: [{id, name, topic, post}]}]}
  selectedChannelKey: null, // String(channel.id) of the channel on screen
  channels: new Map(), // channel key -> channel cache, see createChannelCache
  pendingSends: new Map(), // nonce -> pending send, see submitComposer
  messageElements: new Map(), // render key -> {signature, element}, reused between renders

  socket: null,
  socketReady: false, // true between the ready frame and the socket's close
  lastFrameAt: 0, // Date.now() of the last frame from the server
  heartbeatTimer: null,
  reconnectTimer: null,
  reconnectAttempt: 0,
  lastSentNonce: null, // nonce of the last send frame, blamed when the server closes with 1009

  socketLost: false, // true from a socket close or failure until the next ready frame; polling runs meanwhile
  pollController: null, // AbortController of the running poll loop
};

// ---------------------------------------------------------------------------
// Small helpers

function byId(id) {
  return document.getElementById(id);
}

function createElement(tagName, className, text) {
  const element = document.createElement(tagName);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

function createButton(label, className, onClick) {
  const button = createElement('button', className, label);
  button.type = 'button';
  button.addEventListener('click', onClick);
  return button;
}

// Message ids and revs are u64 decimal strings, beyond the exact range of
// Number, so they are compared as BigInt.
function compareIds(left, right) {
  const a = BigInt(left);
  const b = BigInt(right);
  if (a < b) return -1;
  if (a > b) return 1;
  return 0;
}

// crypto.randomUUID exists only in secure contexts (https, localhost), but a
// self-hosted server may be reached over plain http on a LAN.
function createNonce() {
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
}

// Resolves after ms, or rejects with the abort reason when the signal aborts first.
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

function isAbortError(error) {
  return error instanceof DOMException && error.name === 'AbortError';
}

function formatTime(ms) {
  const date = new Date(Number(ms));
  if (Number.isNaN(date.getTime())) return '';
  const now = new Date();
  if (date.toDateString() === now.toDateString()) {
    return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }
  return date.toLocaleString([], { dateStyle: 'short', timeStyle: 'short' });
}

// ---------------------------------------------------------------------------
// HTTP API

class ApiError extends Error {
  // status is 0 when the request got no response at all.
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const NETWORK_ERROR_MESSAGE = 'Cannot reach the server. Check your connection and try again.';

// Sends a JSON request with the session cookie and returns the parsed body.
// Throws ApiError with the server's error message for any non-2xx status, and
// rethrows AbortError when the signal aborts.
async function apiRequest(method, path, { body, signal } = {}) {
  const options = {
    method,
    credentials: 'same-origin',
    headers: { Accept: 'application/json' },
    signal,
  };
  if (body !== undefined) {
    options.headers['Content-Type'] = 'application/json';
    options.body = JSON.stringify(body);
  }

  let response;
  let text;
  try {
    response = await fetch(path, options);
    text = await response.text();
  } catch (error) {
    if (isAbortError(error)) throw error;
    throw new ApiError(0, 'network', NETWORK_ERROR_MESSAGE);
  }
  signal?.throwIfAborted();

  const data = parseJson(text);
  if (!response.ok) {
    const error = data?.error;
    throw new ApiError(
      response.status,
      error?.code ?? `http_${response.status}`,
      error?.message ?? `The server responded with status ${response.status}.`,
    );
  }
  return data;
}

function parseJson(text) {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function channelMessagesPath(channelId) {
  return `/api/channels/${encodeURIComponent(channelId)}/messages`;
}

// ---------------------------------------------------------------------------
// Auth screen

function showView(view) {
  dom.loadingView.hidden = view !== 'loading';
  dom.authView.hidden = view !== 'auth';
  dom.chatView.hidden = view !== 'chat';
}

function showAuthView(errorMessage = '') {
  showView('auth');
  setAuthError(errorMessage);
  showAuthForm('login');
}

function showAuthForm(name) {
  dom.loginSection.hidden = name !== 'login';
  dom.registerSection.hidden = name !== 'register';
  const form = name === 'login' ? dom.loginForm : dom.registerForm;
  form.elements.username.focus();
}

function setAuthError(message) {
  dom.authError.textContent = message;
  dom.authError.hidden = message === '';
}

function setFormBusy(form, busy) {
  for (const control of form.elements) control.disabled = busy;
}

async function handleLoginSubmit(event) {
  event.preventDefault();
  const form = dom.loginForm;
  setAuthError('');
  setFormBusy(form, true);
  try {
    await logIn(form.elements.username.value.trim(), form.elements.password.value);
    form.reset();
  } catch (error) {
    setAuthError(error.message);
  } finally {
    setFormBusy(form, false);
  }
}

async function handleRegisterSubmit(event) {
  event.preventDefault();
  const form = dom.registerForm;
  const username = form.elements.username.value.trim();
  const password = form.elements.password.value;
  const setupCode = form.elements.setup_code.value.trim();
  const body = { username, password };
  if (setupCode !== '') body.setup_code = setupCode;

  setAuthError('');
  setFormBusy(form, true);
  try {
    await apiRequest('POST', '/api/register', { body });
  } catch (error) {
    setAuthError(error.message);
    setFormBusy(form, false);
    return;
  }

  // Registration does not start a session, so log in with the same credentials.
  try {
    await logIn(username, password);
    form.reset();
  } catch (error) {
    showAuthForm('login');
    dom.loginForm.elements.username.value = username;
    setAuthError(`The account was created, but logging in failed: ${error.message}`);
  } finally {
    setFormBusy(form, false);
  }
}

// The response also carries the token, but the page relies on the HttpOnly
// cookie that the same response sets and never stores the token.
async function logIn(username, password) {
  const data = await apiRequest('POST', '/api/session', { body: { username, password } });
  startChat(data.user);
}

async function logOut() {
  dom.logoutButton.disabled = true;
  try {
    await apiRequest('DELETE', '/api/session');
  } catch (error) {
    // A 401 means the session had already ended, so the page logs out locally.
    if (error.status !== 401) {
      showNotice(`Logging out failed: ${error.message}`);
      dom.logoutButton.disabled = false;
      return;
    }
  }
  dom.logoutButton.disabled = false;
  stopChat();
  showAuthView();
}

function handleSessionExpired() {
  stopChat();
  showAuthView('Your session has ended. Log in again.');
}

// ---------------------------------------------------------------------------
// Chat lifecycle

function startChat(user) {
  state.user = user;
  showView('chat');
  renderCurrentUser();
  renderLayout();
  renderMessages();
  setConnectionStatus('connecting');
  connectSocket();
}

// Stops every timer, socket and request of the session and clears its data.
function stopChat() {
  const socket = state.socket;
  state.socket = null; // detaches the socket's handlers before it closes
  state.socketReady = false;
  socket?.close(1000);
  stopHeartbeat();
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  state.reconnectAttempt = 0;
  state.socketLost = false;
  stopPolling();

  state.user = null;
  state.epoch = null;
  state.layout = null;
  state.selectedChannelKey = null;
  state.channels.clear();
  state.pendingSends.clear();
  state.messageElements.clear();
  state.lastSentNonce = null;
  dom.messageList.replaceChildren();
  dom.sidebar.replaceChildren();
  hideNotice();
}

function renderCurrentUser() {
  const user = state.user;
  const role = user.role === 'admin' ? ' (admin)' : '';
  dom.currentUser.textContent = `${user.name}${role}`;
}

const CONNECTION_LABELS = {
  connecting: ['Connecting…', 'Opening the live connection.'],
  live: ['Live', 'Messages arrive over the live connection.'],
  reconnecting: ['Reconnecting…', 'The server cannot be reached. The page keeps trying.'],
  polling: ['Offline, polling', 'The live connection is down. Messages arrive over HTTP while the page reconnects.'],
};

function setConnectionStatus(kind) {
  const [label, description] = CONNECTION_LABELS[kind];
  dom.connectionStatus.dataset.state = kind;
  dom.connectionStatus.textContent = label;
  dom.connectionStatus.title = description;
}

function showNotice(message) {
  dom.noticeText.textContent = message;
  dom.notice.hidden = false;
}

function hideNotice() {
  dom.notice.hidden = true;
  dom.noticeText.textContent = '';
}

// ---------------------------------------------------------------------------
// Layout and channel selection

function allChannels() {
  if (!state.layout) return [];
  return state.layout.categories.flatMap((category) => category.channels ?? []);
}

function findChannel(key) {
  return allChannels().find((channel) => String(channel.id) === key) ?? null;
}

function selectedChannel() {
  return state.selectedChannelKey === null ? null : findChannel(state.selectedChannelKey);
}

function canPostIn(channel) {
  return channel.post !== 'admins' || state.user.role === 'admin';
}

// Stores a layout from a ready frame or GET /api/layout and keeps the
// selection when the channel still exists. It sends no subscribe.
function applyLayout(layout) {
  state.layout = layout;
  if (selectedChannel() === null) {
    const first = allChannels()[0];
    state.selectedChannelKey = first ? String(first.id) : null;
  }
  renderLayout();
}

function renderLayout() {
  renderSidebar();
  renderChannelHeader();
  updateComposer();
}

function selectChannel(key) {
  closeSidebarOnNarrowScreens();
  if (key === state.selectedChannelKey) return;

  const previous = selectedChannel();
  if (isSocketLive() && previous) sendFrame({ op: 'unsubscribe', channel: previous.id });
  state.selectedChannelKey = key;
  state.messageElements.clear();

  renderLayout();
  renderMessages();
  scrollToBottom();

  if (isSocketLive()) subscribeSelectedChannel();
  else if (state.socketLost) restartPolling();
}

function renderSidebar() {
  const sections = [];
  for (const category of state.layout?.categories ?? []) {
    const section = createElement('section', 'category');
    section.append(createElement('h3', 'category-name', category.name));
    const list = createElement('ul', 'channel-links');
    for (const channel of category.channels ?? []) list.append(buildChannelLink(channel));
    section.append(list);
    sections.push(section);
  }
  dom.sidebar.replaceChildren(...sections);
}

function buildChannelLink(channel) {
  const key = String(channel.id);
  const item = createElement('li');
  const button = createButton('', 'channel-link', () => selectChannel(key));
  button.append(createElement('span', 'channel-link-name', `# ${channel.name}`));
  if (channel.post === 'admins') {
    button.append(createElement('span', 'badge', 'announcements'));
  }
  if (channel.locked) {
    button.append(createElement('span', 'badge', `${channel.min_tier} tier`));
  }
  if (key === state.selectedChannelKey) button.setAttribute('aria-current', 'true');
  item.append(button);
  return item;
}

function renderChannelHeader() {
  const channel = selectedChannel();
  if (channel) dom.channelName.textContent = `# ${channel.name}`;
  else dom.channelName.textContent = state.layout ? 'No channel' : 'Loading channels…';
  const topic = channel?.topic ?? '';
  dom.channelTopic.textContent = topic;
  dom.channelTopic.hidden = topic === '';
}

function updateComposer() {
  const channel = selectedChannel();
  let reason = '';
  if (!channel) {
    reason = 'Select a channel to write in it.';
  } else if (channel.locked) {
    reason = `This channel needs the ${channel.min_tier} tier or higher.`;
  } else if (!canPostIn(channel)) {
    reason = 'This is an announcement channel: only admins can post here.';
  } else if (isMuted()) {
    reason = `You are muted until ${new Date(Number(state.user.muted_until)).toLocaleString()}.`;
  }
  dom.composerInput.disabled = reason !== '';
  dom.sendButton.disabled = reason !== '';
  dom.composerReason.textContent = reason;
  dom.composerReason.hidden = reason === '';
}

function toggleSidebar() {
  const open = dom.sidebar.classList.toggle('open');
  dom.sidebarToggle.setAttribute('aria-expanded', String(open));
}

function closeSidebarOnNarrowScreens() {
  dom.sidebar.classList.remove('open');
  dom.sidebarToggle.setAttribute('aria-expanded', 'false');
}

// ---------------------------------------------------------------------------
// Message cache

// One cache per channel. `messages` maps message id to the newest version seen,
// tombstones included, so that an older copy arriving late cannot bring a
// deleted message back. `lastRev` is the highest rev received in rev order
// (subscribe batches, live events, polling) and is where a resume starts.
function createChannelCache() {
  return {
    messages: new Map(),
    lastRev: null,
    loaded: false, // true once a subscribe or poll returned the channel's messages
    hasOlder: false,
    loadingOlder: false,
    subscribeAfter: null, // the `after` of the last subscribe sent for this channel
  };
}

function channelCache(key) {
  let cache = state.channels.get(key);
  if (!cache) {
    cache = createChannelCache();
    state.channels.set(key, cache);
  }
  return cache;
}

function resetChannelCaches() {
  state.channels.clear();
  state.messageElements.clear();
}

function recordRev(cache, rev) {
  if (cache.lastRev === null || compareIds(rev, cache.lastRev) > 0) cache.lastRev = rev;
}

// Keeps the version with the highest rev, because the same message can arrive
// twice: in an HTTP response and a poll, or in a resubscribe batch.
function storeMessage(cache, message) {
  const existing = cache.messages.get(message.id);
  if (existing && compareIds(existing.rev, message.rev) > 0) return;
  cache.messages.set(message.id, message);
}

function oldestMessageId(cache) {
  let oldest = null;
  for (const id of cache.messages.keys()) {
    if (oldest === null || compareIds(id, oldest) < 0) oldest = id;
  }
  return oldest;
}

// Applies one change received in rev order: a subscribe batch without gap, a
// live event or a poll result.
function applyChange(cache, message) {
  recordRev(cache, message.rev);
  // An edit or delete of a message older than the loaded window would show up
  // detached from its neighbours. "Load older" fetches it in its current state.
  const oldest = oldestMessageId(cache);
  const outsideWindow = cache.hasOlder && oldest !== null && compareIds(message.id, oldest) < 0;
  if (outsideWindow && !cache.messages.has(message.id)) return;
  storeMessage(cache, message);
}

// Replaces the cache with a batch that starts a fresh view: the newest
// messages, or the newest changes after a gap.
function replaceMessages(cache, messages) {
  cache.messages.clear();
  for (const message of messages) {
    recordRev(cache, message.rev);
    storeMessage(cache, message);
  }
}

function applyHistory(cache, messages, hasMore) {
  // History is ordered by id, not by rev, so it must not move lastRev.
  for (const message of messages) storeMessage(cache, message);
  cache.hasOlder = Boolean(hasMore);
  cache.loadingOlder = false;
}

function isOwnMessage(message) {
  return Boolean(message.author && state.user) && String(message.author.id) === String(state.user.id);
}

// Remembers which server message belongs to a pending send, so the page shows
// that message with the pending mark in place of the local copy.
function linkPendingSend(message) {
  if (!message.nonce || message.deleted || !isOwnMessage(message)) return;
  const entry = state.pendingSends.get(message.nonce);
  if (entry) entry.messageId = message.id;
}

// ---------------------------------------------------------------------------
// WebSocket

function isSocketLive() {
  return state.socket !== null && state.socketReady;
}

function connectSocket() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  let socket;
  try {
    socket = new WebSocket(`${scheme}://${location.host}/ws`);
  } catch (error) {
    handleSocketLost(`could not be created (${error.message})`);
    return;
  }
  state.socket = socket;
  state.socketReady = false;

  // The identity checks ignore events of a socket that the page already abandoned.
  socket.addEventListener('message', (event) => {
    if (state.socket === socket) handleSocketMessage(event.data);
  });
  socket.addEventListener('close', (event) => {
    if (state.socket !== socket) return;
    if (event.code === CLOSE_MESSAGE_TOO_BIG) failLastSendAsTooLarge();
    handleSocketLost(`closed with code ${event.code}`);
  });
}

// Sends a frame on the live socket. Returns false, without sending, when the
// frame is larger than the server accepts.
function sendFrame(frame) {
  const text = JSON.stringify(frame);
  if (textEncoder.encode(text).length > MAX_FRAME_BYTES) return false;
  state.socket.send(text);
  return true;
}

function handleSocketMessage(data) {
  state.lastFrameAt = Date.now();
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
    case 'layout': handleLayoutFrame(frame); break;
    case 'user': handleUserFrame(frame); break;
    case 'unsubscribed': handleUnsubscribed(frame); break;
    default: console.warn(`Ignored a WebSocket frame with unknown op "${frame.op}".`);
  }
}

function handleReady(frame) {
  // A new epoch means the server restarted, and messages seen live before the
  // restart may never have reached disk, so every cached view is reloaded. On
  // the first ready the caches are empty or filled by polling, which is cheap
  // to reload.
  if (frame.epoch !== state.epoch) resetChannelCaches();
  state.epoch = frame.epoch;
  state.user = frame.user;
  state.heartbeatMs = Number(frame.heartbeat_ms) > 0 ? Number(frame.heartbeat_ms) : DEFAULT_HEARTBEAT_MS;
  state.socketReady = true;
  state.reconnectAttempt = 0;
  state.socketLost = false;
  stopPolling();
  startHeartbeat();

  renderCurrentUser();
  if (frame.layout) applyLayout(frame.layout);
  setConnectionStatus('live');
  subscribeSelectedChannel();
  resendPendingSends();
  renderMessages();
}

// A structure or access change: the selection may have moved to another
// channel, or the selected channel may have become readable, so both cases
// subscribe again.
function handleLayoutFrame(frame) {
  if (!frame.layout) return;
  const previousKey = state.selectedChannelKey;
  const wasLocked = selectedChannel()?.locked === true;
  applyLayout(frame.layout);
  const channel = selectedChannel();
  const unlocked = wasLocked && channel && !channel.locked;
  if (state.selectedChannelKey !== previousKey || unlocked) {
    state.messageElements.clear();
    renderMessages();
    subscribeSelectedChannel();
  }
}

function handleUserFrame(frame) {
  if (!frame.user) return;
  state.user = frame.user;
  renderCurrentUser();
  updateComposer();
}

// The server ended a subscription because the channel was deleted or the
// user may no longer read it, so its cached messages are dropped from view.
function handleUnsubscribed(frame) {
  const key = String(frame.channel);
  const cache = channelCache(key);
  replaceMessages(cache, []);
  cache.lastRev = null;
  cache.loaded = false;
  if (key === state.selectedChannelKey) {
    showNotice(frame.reason === 'deleted'
      ? 'This channel was deleted.'
      : 'You no longer have access to this channel.');
    renderMessages();
  }
}

function isMuted() {
  return Number(state.user?.muted_until) > Date.now();
}

function subscribeSelectedChannel() {
  const channel = selectedChannel();
  if (!channel || channel.locked) return;
  const cache = channelCache(String(channel.id));
  cache.subscribeAfter = cache.lastRev;
  sendFrame({ op: 'subscribe', channel: channel.id, after: cache.lastRev, limit: SUBSCRIBE_LIMIT });
}

function handleSubscribed(frame) {
  const key = String(frame.channel);
  const cache = channelCache(key);
  const messages = frame.messages ?? [];

  if (cache.subscribeAfter === null || frame.gap) {
    // With no known rev, or when changes were skipped, the cached messages may
    // be stale, so the batch replaces the view.
    replaceMessages(cache, messages);
    cache.hasOlder = Boolean(frame.gap) || messages.length >= SUBSCRIBE_LIMIT;
  } else {
    for (const message of messages) applyChange(cache, message);
  }
  cache.loaded = true;
  for (const message of messages) linkPendingSend(message);

  if (key === state.selectedChannelKey) renderMessages();
}

function handleMessageEvent(message) {
  if (!message || message.channel === undefined) return;
  const key = String(message.channel);
  applyChange(channelCache(key), message);
  linkPendingSend(message);
  if (key === state.selectedChannelKey) renderMessages();
}

function handleAck(frame) {
  const entry = state.pendingSends.get(frame.nonce);
  if (!entry) return;
  state.pendingSends.delete(frame.nonce);

  const cache = channelCache(entry.channelKey);
  if (!cache.messages.has(frame.id)) {
    // The live event is missing when the channel was unsubscribed before it
    // arrived. A local copy keeps the text on screen until the next subscribe
    // returns the stored message, which replaces it because its rev is not lower.
    storeMessage(cache, localCopyOfSentMessage(entry, frame));
  }
  if (entry.channelKey === state.selectedChannelKey) renderMessages();
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
  const cache = channelCache(key);
  applyHistory(cache, frame.messages ?? [], frame.has_more);
  if (key === state.selectedChannelKey) renderMessages({ keepOffsetFromBottom: true });
}

function handleErrorFrame(frame) {
  const message = frame.message || `The server reported the error "${frame.code}".`;
  const entry = frame.nonce ? state.pendingSends.get(frame.nonce) : undefined;
  if (entry) {
    markSendFailed(entry, message);
    return;
  }
  // An error without a nonce may be the response to a history request, so
  // "Load older" becomes usable again.
  for (const cache of state.channels.values()) cache.loadingOlder = false;
  showNotice(message);
  renderMessages();
}

function handleSocketLost(reason) {
  state.socket = null;
  state.socketReady = false;
  stopHeartbeat();
  for (const cache of state.channels.values()) cache.loadingOlder = false;

  const delay = scheduleReconnect();
  console.info(`WebSocket ${reason}. Reconnecting in ${Math.round(delay)} ms.`);
  // While polling works the status stays "polling" across failed reconnects.
  if (dom.connectionStatus.dataset.state !== 'polling') setConnectionStatus('reconnecting');
  if (!state.socketLost) {
    state.socketLost = true;
    startPolling();
  }
  renderMessages();
}

// A socket that stops sending frames (a half-open TCP connection) may take
// minutes to fire close, so the page closes it and reconnects.
function dropDeadSocket() {
  const socket = state.socket;
  handleSocketLost('stopped sending frames');
  socket.close();
}

// The server closes with 1009 when a frame is over its size limit. The last
// send frame is the likely cause, and resending it after the reconnect would
// close the socket again, so it is marked failed instead.
function failLastSendAsTooLarge() {
  const entry = state.pendingSends.get(state.lastSentNonce);
  if (entry && entry.status === 'pending') {
    markSendFailed(entry, 'The message is too large for the server.');
  }
}

function startHeartbeat() {
  stopHeartbeat();
  state.lastFrameAt = Date.now();
  state.heartbeatTimer = setInterval(sendHeartbeat, state.heartbeatMs);
}

function stopHeartbeat() {
  clearInterval(state.heartbeatTimer);
  state.heartbeatTimer = null;
}

function sendHeartbeat() {
  if (!isSocketLive()) return;
  if (Date.now() - state.lastFrameAt > state.heartbeatMs * HEARTBEAT_TIMEOUT_FACTOR) {
    dropDeadSocket();
    return;
  }
  sendFrame({ op: 'heartbeat' });
}

function reconnectDelay(attempt) {
  const ceiling = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** Math.min(attempt, 20));
  return ceiling * (1 - Math.random() * RECONNECT_JITTER);
}

// Schedules the next connection attempt and returns its delay in ms.
function scheduleReconnect() {
  clearTimeout(state.reconnectTimer);
  const delay = reconnectDelay(state.reconnectAttempt);
  state.reconnectAttempt += 1;
  state.reconnectTimer = setTimeout(() => {
    state.reconnectTimer = null;
    connectSocket();
  }, delay);
  return delay;
}

// The browser reports that the network is back, so waiting out the backoff
// would only delay the reconnect.
function reconnectNow() {
  if (state.user === null || state.socket !== null) return;
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  state.reconnectAttempt = 0;
  connectSocket();
  if (state.socketLost) restartPolling();
}

// ---------------------------------------------------------------------------
// HTTP long-polling while the socket is down

function startPolling() {
  if (state.pollController) return;
  const controller = new AbortController();
  state.pollController = controller;
  runPollLoop(controller.signal).finally(() => {
    if (state.pollController === controller) state.pollController = null;
  });
}

function stopPolling() {
  state.pollController?.abort();
  state.pollController = null;
}

function restartPolling() {
  stopPolling();
  startPolling();
}

// Polls the selected channel until the signal aborts. Each request long-polls,
// so the loop needs no interval timer. Failed requests back off like reconnects.
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
        handleSessionExpired();
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

// Runs one poll request for the selected channel. Returns 'idle' when there is
// no channel to poll, 'has_more' when more changes are ready, else 'done'.
// NOTE: HTTP responses carry no epoch, so a message that was lost in a server
// restart stays on screen until the socket reconnects and ready shows the new epoch.
async function pollOnce(signal, waitSeconds) {
  if (!state.layout) applyLayout(await fetchLayout(signal));
  const channel = selectedChannel();
  if (!channel) return 'idle';

  const key = String(channel.id);
  const cache = channelCache(key);
  const path = channelMessagesPath(channel.id);

  if (cache.lastRev === null) {
    const page = await apiRequest('GET', `${path}?limit=${SUBSCRIBE_LIMIT}`, { signal });
    replaceMessages(cache, page.messages ?? []);
    cache.loaded = true;
    cache.hasOlder = Boolean(page.has_more);
    // An empty channel has no rev yet. Rev 0 is below every real rev, so the
    // next request long-polls instead of fetching the newest page again.
    if (cache.lastRev === null) cache.lastRev = '0';
    renderPolledChannel(key);
    return 'done';
  }

  const query = `after=${encodeURIComponent(cache.lastRev)}&limit=${POLL_LIMIT}&wait=${waitSeconds}`;
  const page = await apiRequest('GET', `${path}?${query}`, { signal });
  for (const message of page.messages ?? []) {
    applyChange(cache, message);
    linkPendingSend(message);
  }
  renderPolledChannel(key);
  return page.has_more ? 'has_more' : 'done';
}

// GET /api/layout returns the same layout object as the ready frame.
function fetchLayout(signal) {
  return apiRequest('GET', '/api/layout', { signal });
}

function renderPolledChannel(key) {
  if (key === state.selectedChannelKey) renderMessages();
}

// ---------------------------------------------------------------------------
// Sending, editing and deleting

function submitComposer() {
  const channel = selectedChannel();
  const content = dom.composerInput.value;
  if (!channel || !canPostIn(channel) || content.trim() === '') return;

  // A pending send stays in memory until the server acknowledges it, and is
  // resent with the same nonce after a reconnect, so the server stores it once.
  const entry = {
    nonce: createNonce(),
    channelKey: String(channel.id),
    channelId: channel.id,
    content,
    createdAt: Date.now(),
    status: 'pending', // 'pending' until acknowledged, 'failed' after an error
    error: null,
    messageId: null, // id of the server's message once an event carries this nonce
    httpInFlight: false,
  };
  state.pendingSends.set(entry.nonce, entry);
  dom.composerInput.value = '';
  renderMessages();
  scrollToBottom();
  transmitSend(entry);
}

function transmitSend(entry) {
  if (isSocketLive()) sendOverSocket(entry);
  else postOverHttp(entry);
}

function sendOverSocket(entry) {
  const frame = { op: 'send', channel: entry.channelId, content: entry.content, nonce: entry.nonce };
  if (!sendFrame(frame)) {
    markSendFailed(entry, 'The message is too large to send.');
    return;
  }
  state.lastSentNonce = entry.nonce;
}

async function postOverHttp(entry) {
  if (entry.httpInFlight) return;
  entry.httpInFlight = true;
  try {
    const body = { content: entry.content, nonce: entry.nonce };
    const data = await apiRequest('POST', channelMessagesPath(entry.channelId), { body });
    // The entry is gone when a socket ack arrived first, the user discarded it
    // or logged out, so there is nothing left to update.
    if (state.pendingSends.get(entry.nonce) !== entry) return;
    state.pendingSends.delete(entry.nonce);
    // The response does not move lastRev, because older changes may still be
    // on their way through the poll.
    if (data?.message) storeMessage(channelCache(entry.channelKey), data.message);
    if (entry.channelKey === state.selectedChannelKey) renderMessages();
  } catch (error) {
    if (state.pendingSends.get(entry.nonce) !== entry) return;
    if (error.status === 401) {
      handleSessionExpired();
    } else if (error.status !== 0) {
      markSendFailed(entry, error.message);
    }
    // Without a response the send stays pending, and the next successful poll
    // or reconnect sends it again.
  } finally {
    entry.httpInFlight = false;
  }
}

// Sends every unacknowledged message again with its original nonce. Failed
// sends wait for the user's retry.
function resendPendingSends() {
  for (const entry of state.pendingSends.values()) {
    if (entry.status === 'pending') transmitSend(entry);
  }
}

function markSendFailed(entry, message) {
  entry.status = 'failed';
  entry.error = message;
  if (entry.channelKey === state.selectedChannelKey) renderMessages();
}

function retrySend(nonce) {
  const entry = state.pendingSends.get(nonce);
  if (!entry) return;
  entry.status = 'pending';
  entry.error = null;
  renderMessages();
  transmitSend(entry);
}

function discardSend(nonce) {
  state.pendingSends.delete(nonce);
  renderMessages();
}

function findCachedMessage(id) {
  for (const cache of state.channels.values()) {
    const message = cache.messages.get(id);
    if (message) return { cache, message };
  }
  return null;
}

async function editMessage(id) {
  const found = findCachedMessage(id);
  if (!found || found.message.deleted) return;
  const content = window.prompt('Edit message', found.message.content);
  if (content === null || content.trim() === '' || content === found.message.content) return;

  if (isSocketLive()) {
    if (!sendFrame({ op: 'edit', id, content })) showNotice('The edited message is too large to send.');
    return;
  }
  try {
    const data = await apiRequest('PATCH', `/api/messages/${encodeURIComponent(id)}`, { body: { content } });
    if (data?.message) storeMessage(found.cache, data.message);
    renderMessages();
  } catch (error) {
    handleRequestError(error);
  }
}

async function deleteMessage(id) {
  const found = findCachedMessage(id);
  if (!found || found.message.deleted) return;
  if (!window.confirm('Delete this message?')) return;

  if (isSocketLive()) {
    sendFrame({ op: 'delete', id });
    return;
  }
  try {
    // The response carries the tombstone. It does not move lastRev, because
    // older changes may still be on their way through the poll.
    const data = await apiRequest('DELETE', `/api/messages/${encodeURIComponent(id)}`);
    if (data?.message) storeMessage(found.cache, data.message);
    renderMessages();
  } catch (error) {
    handleRequestError(error);
  }
}

function handleRequestError(error) {
  if (error.status === 401) handleSessionExpired();
  else showNotice(error.message);
}

async function loadOlderMessages() {
  const channel = selectedChannel();
  if (!channel) return;
  const key = String(channel.id);
  const cache = channelCache(key);
  const before = oldestMessageId(cache);
  if (cache.loadingOlder || before === null) return;

  cache.loadingOlder = true;
  renderMessages();
  if (isSocketLive()) {
    sendFrame({ op: 'history', channel: channel.id, before, limit: HISTORY_LIMIT });
    return;
  }
  try {
    const query = `before=${encodeURIComponent(before)}&limit=${HISTORY_LIMIT}`;
    const page = await apiRequest('GET', `${channelMessagesPath(channel.id)}?${query}`);
    applyHistory(cache, page.messages ?? [], page.has_more);
  } catch (error) {
    cache.loadingOlder = false;
    handleRequestError(error);
  }
  if (key === state.selectedChannelKey) renderMessages({ keepOffsetFromBottom: true });
}

// ---------------------------------------------------------------------------
// Message list rendering

function isPinnedToBottom() {
  const scroller = dom.messageScroller;
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight <= PINNED_THRESHOLD_PX;
}

function scrollToBottom() {
  dom.messageScroller.scrollTop = dom.messageScroller.scrollHeight;
}

// Redraws the selected channel. A reader at the bottom stays at the bottom.
// keepOffsetFromBottom keeps the visible messages in place when older ones are
// inserted above them.
function renderMessages({ keepOffsetFromBottom = false } = {}) {
  if (state.user === null) return;
  const scroller = dom.messageScroller;
  const pinned = isPinnedToBottom();
  const offsetFromBottom = scroller.scrollHeight - scroller.scrollTop;

  const key = state.selectedChannelKey;
  const cache = key === null ? null : channelCache(key);
  const elements = key === null ? [] : buildMessageElements(key, cache);
  reconcileChildren(dom.messageList, elements);

  dom.emptyChannel.hidden = !cache?.loaded || elements.length > 0 || cache.hasOlder;
  dom.loadOlder.hidden = !cache?.hasOlder;
  dom.loadOlder.disabled = Boolean(cache?.loadingOlder);
  dom.loadOlder.textContent = cache?.loadingOlder ? 'Loading…' : 'Load older messages';

  if (keepOffsetFromBottom) scroller.scrollTop = scroller.scrollHeight - offsetFromBottom;
  else if (pinned) scrollToBottom();
}

// Builds the list items of a channel, reusing unchanged elements: stored
// messages sorted by id, then local copies of sends without a server message yet.
function buildMessageElements(key, cache) {
  const messages = [...cache.messages.values()]
    .filter((message) => !message.deleted)
    .sort((a, b) => compareIds(a.id, b.id));
  const unseenSends = [...state.pendingSends.values()].filter(
    (entry) => entry.channelKey === key && !(entry.messageId !== null && cache.messages.has(entry.messageId)),
  );

  const previous = state.messageElements;
  const next = new Map();
  const elements = [];
  const reuseOrBuild = (renderKey, signature, build) => {
    const cached = previous.get(renderKey);
    const element = cached && cached.signature === signature ? cached.element : build();
    next.set(renderKey, { signature, element });
    elements.push(element);
  };

  for (const message of messages) {
    const entry = message.nonce && isOwnMessage(message) ? state.pendingSends.get(message.nonce) : undefined;
    const signature = `${message.rev}|${entry?.status ?? ''}|${entry?.error ?? ''}`;
    reuseOrBuild(`message:${message.id}`, signature, () => buildMessageElement(message, entry));
  }
  for (const entry of unseenSends) {
    const signature = `${entry.status}|${entry.error ?? ''}`;
    reuseOrBuild(`send:${entry.nonce}`, signature, () => buildUnseenSendElement(entry));
  }
  state.messageElements = next;
  return elements;
}

// Brings the children of `parent` into the order of `elements` while moving as
// few nodes as possible, so text selections in unchanged messages survive.
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

function buildMessageElement(message, sendEntry) {
  const own = isOwnMessage(message);
  const item = createElement('li', own ? 'message own' : 'message');

  const meta = createElement('div', 'message-meta');
  meta.append(
    createElement('span', 'author', message.author?.name ?? 'unknown'),
    buildTimeElement(message.ts),
  );
  if (message.edited_ts !== null && message.edited_ts !== undefined) {
    const edited = createElement('span', 'edited', '(edited)');
    edited.title = `Edited ${new Date(Number(message.edited_ts)).toLocaleString()}`;
    meta.append(edited);
  }
  const actions = buildMessageActions(message, own);
  if (actions) meta.append(actions);

  item.append(meta, createElement('div', 'message-content', message.content ?? ''));
  if (sendEntry) appendSendState(item, sendEntry);
  return item;
}

function buildUnseenSendElement(entry) {
  const item = createElement('li', 'message own');
  const meta = createElement('div', 'message-meta');
  meta.append(createElement('span', 'author', state.user.name), buildTimeElement(entry.createdAt));
  item.append(meta, createElement('div', 'message-content', entry.content));
  appendSendState(item, entry);
  return item;
}

function buildTimeElement(ms) {
  const date = new Date(Number(ms));
  const time = createElement('time', 'message-time', formatTime(ms));
  if (!Number.isNaN(date.getTime())) {
    time.dateTime = date.toISOString();
    time.title = date.toLocaleString();
  }
  return time;
}

// Authors may edit and delete their own messages, and admins may delete any.
function buildMessageActions(message, own) {
  const canDelete = own || state.user.role === 'admin';
  if (!own && !canDelete) return null;
  const actions = createElement('span', 'message-actions');
  if (own) actions.append(createButton('Edit', 'small-button', () => editMessage(message.id)));
  if (canDelete) actions.append(createButton('Delete', 'small-button', () => deleteMessage(message.id)));
  return actions;
}

function appendSendState(item, entry) {
  if (entry.status === 'pending') {
    item.classList.add('pending');
    item.append(createElement('div', 'send-state', 'Sending…'));
    return;
  }
  item.classList.add('failed');
  const failure = createElement('div', 'send-state');
  failure.append(
    createElement('span', 'error-text', `Not sent: ${entry.error}`),
    createButton('Retry', 'small-button', () => retrySend(entry.nonce)),
    createButton('Discard', 'small-button', () => discardSend(entry.nonce)),
  );
  item.append(failure);
}

// ---------------------------------------------------------------------------
// Start-up

function handleComposerKeydown(event) {
  // Enter during IME composition confirms the composed text, not the message.
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submitComposer();
  }
}

function bindEvents() {
  dom.loginForm.addEventListener('submit', handleLoginSubmit);
  dom.registerForm.addEventListener('submit', handleRegisterSubmit);
  dom.showRegister.addEventListener('click', () => showAuthForm('register'));
  dom.showLogin.addEventListener('click', () => showAuthForm('login'));
  dom.logoutButton.addEventListener('click', logOut);
  dom.sidebarToggle.addEventListener('click', toggleSidebar);
  dom.noticeDismiss.addEventListener('click', hideNotice);
  dom.loadOlder.addEventListener('click', loadOlderMessages);
  dom.composer.addEventListener('submit', (event) => {
    event.preventDefault();
    submitComposer();
  });
  dom.composerInput.addEventListener('keydown', handleComposerKeydown);
  window.addEventListener('online', reconnectNow);
}

// Skips the login screen when the session cookie is still valid.
async function start() {
  bindEvents();
  showView('loading');
  try {
    const data = await apiRequest('GET', '/api/me');
    startChat(data.user);
  } catch (error) {
    showAuthView(error.status === 401 ? '' : error.message);
  }
}

start();
