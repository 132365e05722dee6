// Sends that the server has not acknowledged yet. They are shown at once,
// marked pending, and kept in localStorage with their nonces, so that a
// reload or reconnect sends them again and the server stores each once.

import { state } from './state.js';
import { createNonce } from './util.js';
import { invalidate } from './render.js';
import { isOwnMessage } from './model.js';
import * as storage from './storage.js';

// nonce -> entry. Status is 'pending' until acknowledged, 'waiting' while a
// rate limit delays it (until retryAt, ms since the epoch), or 'failed'
// with the server's error message.
export const pendingSends = new Map();

export function loadOutbox() {
  pendingSends.clear();
  const saved = storage.readJson(state.user.id, 'outbox', []);
  if (!Array.isArray(saved)) return;
  for (const item of saved) {
    if (typeof item?.nonce !== 'string' || typeof item.content !== 'string' || item.channelId === undefined) continue;
    pendingSends.set(item.nonce, {
      nonce: item.nonce,
      channelKey: String(item.channelId),
      channelId: item.channelId,
      content: item.content,
      createdAt: Number(item.createdAt) || Date.now(),
      // A rate-limited send is due again after a reload.
      status: item.status === 'failed' ? 'failed' : 'pending',
      error: item.status === 'failed' ? String(item.error ?? 'not sent') : null,
      retryAt: null,
      messageId: null, // id of the server's message once an event carries this nonce
      httpInFlight: false,
    });
  }
}

export function forgetOutbox() {
  pendingSends.clear();
}

function persist() {
  if (!state.user) return;
  const saved = [...pendingSends.values()].map((entry) => ({
    nonce: entry.nonce,
    channelId: entry.channelId,
    content: entry.content,
    createdAt: entry.createdAt,
    status: entry.status,
    error: entry.error,
  }));
  storage.writeJson(state.user.id, 'outbox', saved);
}

function changed(entry) {
  persist();
  if (entry.channelKey === state.selectedChannelKey) invalidate('messages');
}

export function addSend(channel, content) {
  const entry = {
    nonce: createNonce(),
    channelKey: String(channel.id),
    channelId: channel.id,
    content,
    createdAt: Date.now(),
    status: 'pending',
    error: null,
    retryAt: null,
    messageId: null,
    httpInFlight: false,
  };
  pendingSends.set(entry.nonce, entry);
  changed(entry);
  return entry;
}

export function removeSend(nonce) {
  const entry = pendingSends.get(nonce);
  if (!entry) return;
  pendingSends.delete(nonce);
  clearTimeout(entry.retryTimer);
  changed(entry);
}

export function markFailed(entry, message) {
  entry.status = 'failed';
  entry.error = message;
  entry.retryAt = null;
  changed(entry);
}

export function markWaiting(entry, retryAt) {
  entry.status = 'waiting';
  entry.error = null;
  entry.retryAt = retryAt;
  changed(entry);
}

export function markPending(entry) {
  entry.status = 'pending';
  entry.error = null;
  entry.retryAt = null;
  changed(entry);
}

// Remembers which server message belongs to a pending send, so the page
// shows that message with the pending mark in place of the local copy.
export function linkPendingSend(message) {
  if (!message.nonce || message.deleted || !isOwnMessage(message)) return;
  const entry = pendingSends.get(message.nonce);
  if (entry) entry.messageId = message.id;
}

export function sendsInChannel(key) {
  return [...pendingSends.values()].filter((entry) => entry.channelKey === key);
}
