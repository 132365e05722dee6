// The composer: a multi-line input (Enter sends, Shift+Enter adds a line),
// a character counter in the server's unit, the reason when the user may
// not write, and the typing hints of others.

import { state, selectedChannel, canPostIn, isMuted } from './state.js';
import { dom } from './dom.js';
import { onRender, invalidate } from './render.js';
import { addSend } from './outbox.js';
import { transmitSend, sendTyping } from './connection.js';
import { contentProblem, editLastOwnMessage } from './messages.js';
import { trimLikeServer, countScalarValues, formatDateTime } from './util.js';

// The counter appears once a message reaches this share of the limit.
const COUNTER_SHOWN_FROM = 0.8;

let muteTimer = null;

// Why the user cannot write in the selected channel, or ''.
function composerBlockReason(channel) {
  if (!channel) return 'Select a channel to write in it.';
  if (channel.locked) return `This channel needs the ${channel.min_tier} tier or higher.`;
  if (!canPostIn(channel)) return 'Only admins can post in this channel.';
  if (isMuted()) return `You are muted until ${formatDateTime(state.user.muted_until)}.`;
  return '';
}

onRender('composer', () => {
  const channel = selectedChannel();
  const reason = state.user ? composerBlockReason(channel) : '';
  dom.composerInput.disabled = reason !== '';
  dom.composerReason.textContent = reason;
  dom.composerReason.hidden = reason === '';
  dom.composerInput.placeholder = channel && reason === ''
    ? `Message #${channel.name}`
    : 'You cannot write here.';

  // A mute ends by itself, so the composer opens again at that moment.
  clearTimeout(muteTimer);
  if (isMuted()) {
    const remaining = Number(state.user.muted_until) - Date.now();
    muteTimer = setTimeout(() => invalidate('composer'), Math.min(remaining + 100, 2 ** 31 - 1));
  }
  updateCounter();
});

// Shows the length in Unicode scalar values near and over the limit, and
// disables Send while the server would reject the content.
function updateCounter() {
  const content = trimLikeServer(dom.composerInput.value);
  const length = countScalarValues(content);
  const max = state.maxMessageChars;
  const problem = content === '' ? '' : contentProblem(content);
  const showCount = length >= max * COUNTER_SHOWN_FROM;
  dom.composerCounter.hidden = !showCount && problem === '';
  dom.composerCounter.textContent = problem !== '' && length <= max ? problem : `${length} / ${max}`;
  dom.composerCounter.classList.toggle('over', problem !== '');
  dom.sendButton.disabled = dom.composerInput.disabled || content === '' || problem !== '';
}

function autosize() {
  const input = dom.composerInput;
  input.style.height = 'auto';
  input.style.height = `${input.scrollHeight + 2}px`;
}

function submitComposer() {
  const channel = selectedChannel();
  if (!channel || composerBlockReason(channel) !== '') return;
  const content = trimLikeServer(dom.composerInput.value);
  if (content === '' || contentProblem(content) !== '') {
    updateCounter();
    return;
  }
  const entry = addSend(channel, content);
  dom.composerInput.value = '';
  autosize();
  updateCounter();
  invalidate('messages', { toBottom: true });
  transmitSend(entry);
}

function handleKeydown(event) {
  // Enter during IME composition confirms the composed text, not the message.
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submitComposer();
  } else if (event.key === 'ArrowUp' && dom.composerInput.value === '' && !event.shiftKey) {
    if (editLastOwnMessage()) event.preventDefault();
  }
}

function handleInput() {
  autosize();
  updateCounter();
  const channel = selectedChannel();
  if (channel && dom.composerInput.value.trim() !== '') sendTyping(channel);
}

export function bindComposerEvents() {
  dom.composer.addEventListener('submit', (event) => {
    event.preventDefault();
    submitComposer();
  });
  dom.composerInput.addEventListener('keydown', handleKeydown);
  dom.composerInput.addEventListener('input', handleInput);
}

export function clearComposer() {
  dom.composerInput.value = '';
  autosize();
  clearTimeout(muteTimer);
}

// "bob is typing…" for the selected channel, from typing frames.
onRender('typing', () => {
  const typists = state.typing.get(state.selectedChannelKey);
  const now = Date.now();
  const names = [];
  for (const [user, expiresAt] of typists ?? []) {
    if (expiresAt <= now) {
      typists.delete(user);
      continue;
    }
    names.push(state.userNames.get(user) ?? 'Someone');
  }
  let text = '';
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = 'Several people are typing…';
  dom.typingIndicator.textContent = text;
});
