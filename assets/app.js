// Aura web client, entry module. It logs in over the HTTP API, receives live
// events over a WebSocket, and long-polls the HTTP API while the socket is
// down. User-provided text reaches the DOM only through textContent and text
// nodes, never as HTML.
//
// Modules, each depending only on those listed before it:
// util, dom, state, render, storage, api, richtext: helpers and shared state.
// model: channel caches, read markers, unread counts.
// outbox: unacknowledged sends, kept in localStorage.
// connection: WebSocket, long-polling and every server operation.
// dialogs, admin: modal dialogs and the admins' structure changes.
// messages, composer, sidebar, presence, auth: the parts of the page.

import { state, bus, DEFAULT_MAX_MESSAGE_CHARS } from './state.js';
import { dom, showNotice, hideNotice } from './dom.js';
import { apiRequest } from './api.js';
import { invalidate, invalidateAll, onRender } from './render.js';
import { loadDeviceState, forgetDeviceState } from './model.js';
import { loadOutbox, forgetOutbox, pendingSends } from './outbox.js';
import { startConnection, stopConnection, reconnectNow } from './connection.js';
import { confirmDialog } from './dialogs.js';
import { bindMessageEvents, forgetMessageView } from './messages.js';
import { bindComposerEvents, clearComposer } from './composer.js';
import { bindSidebarEvents, loadSidebarState, closeDrawer } from './sidebar.js';
import './presence.js';
import { bindAuthEvents, showAuthView, showView } from './auth.js';
import * as storage from './storage.js';

function startChat(user) {
  state.user = user;
  state.userNames.set(String(user.id), user.name);
  loadDeviceState();
  loadOutbox();
  loadSidebarState();
  showView('chat');
  invalidateAll();
  startConnection();
}

// Stops every timer, socket and request of the session and clears its data.
function stopChat() {
  stopConnection();
  forgetDeviceState();
  forgetOutbox();
  forgetMessageView();
  clearComposer();
  closeDrawer();
  hideNotice();
  if (dom.dialog.open) dom.dialog.close();
  dom.channelTree.replaceChildren();

  state.user = null;
  state.epoch = null;
  state.layout = null;
  state.selectedChannelKey = null;
  state.channels.clear();
  state.presence = null;
  state.supportsTyping = false;
  state.typing.clear();
  state.userNames.clear();
  state.maxMessageChars = DEFAULT_MAX_MESSAGE_CHARS;
  state.connection = 'connecting';
  invalidateAll();
}

onRender('user', () => {
  const user = state.user;
  if (!user) return;
  const role = user.role === 'member' ? '' : ` (${user.role})`;
  dom.currentUser.textContent = `${user.name}${role}`;
});

// Logging out removes what this device stored for the account: the cached
// messages, read markers and any unsent messages, after a confirmation.
async function logOut() {
  const unsent = pendingSends.size;
  if (unsent > 0) {
    const confirmed = await confirmDialog({
      title: 'Log out',
      message: unsent === 1
        ? '1 message is not sent yet and will be lost. Log out anyway?'
        : `${unsent} messages are not sent yet and will be lost. Log out anyway?`,
      confirmLabel: 'Log out',
      danger: true,
    });
    if (!confirmed) return;
  }
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
  const userId = state.user.id;
  stopChat();
  storage.clearUserData(userId);
  showAuthView();
}

// The stored data stays, so logging in again resends the outbox.
bus.addEventListener('session-expired', (event) => {
  if (!state.user) return;
  stopChat();
  showAuthView(event.detail ?? 'Your session has ended. Log in again.');
});

function bindEvents() {
  bindAuthEvents(startChat);
  bindMessageEvents();
  bindComposerEvents();
  bindSidebarEvents();
  dom.logoutButton.addEventListener('click', logOut);
  dom.noticeDismiss.addEventListener('click', hideNotice);
  window.addEventListener('online', reconnectNow);
  // Times such as "Today" and mute ends change while the page is open.
  setInterval(() => {
    if (!state.user) return;
    invalidate('messages');
    invalidate('composer');
  }, 60_000);
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
