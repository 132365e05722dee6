// Turns message text into DOM nodes: http and https links become links,
// @name mentions are highlighted, and everything else stays text. Nothing
// is ever parsed as HTML.

import { createElement } from './dom.js';

// A URL candidate runs to the next white space or angle bracket; trailing
// punctuation is trimmed afterwards. A mention candidate is "@" followed by
// username characters (ASCII letters, digits, "_", "-" and ".").
const TOKEN = /https?:\/\/[^\s<>]+|@[A-Za-z0-9_.-]+/giu;
const TRAILING_PUNCTUATION = /[.,;:!?'"*]+$/u;
const NAME_CHARACTER = /[A-Za-z0-9_.@-]/u;
const MIN_NAME = 2;
const MAX_NAME = 32;

// Splits text into [{kind: 'text'|'link'|'mention', text, href?, name?}].
export function tokenize(text) {
  const tokens = [];
  let last = 0;
  for (const match of text.matchAll(TOKEN)) {
    const start = match.index;
    const token = match[0].startsWith('@')
      ? mentionToken(text, start, match[0])
      : linkToken(match[0]);
    if (!token) continue;
    if (start > last) tokens.push({ kind: 'text', text: text.slice(last, start) });
    tokens.push(token);
    last = start + token.text.length;
  }
  if (last < text.length) tokens.push({ kind: 'text', text: text.slice(last) });
  return tokens;
}

function linkToken(candidate) {
  let text = candidate.replace(TRAILING_PUNCTUATION, '');
  // A closing bracket ends the link unless the link opened one, as in
  // Wikipedia addresses.
  for (const [open, close] of [['(', ')'], ['[', ']']]) {
    while (text.endsWith(close) && count(text, close) > count(text, open)) {
      text = text.slice(0, -1).replace(TRAILING_PUNCTUATION, '');
    }
  }
  let url;
  try {
    url = new URL(text);
  } catch {
    return null;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return null;
  return { kind: 'link', text, href: url.href };
}

// NOTE: a trailing "." ends the mention, as at the end of a sentence, so a
// username that itself ends in "." is highlighted without it.
function mentionToken(text, start, candidate) {
  if (start > 0 && NAME_CHARACTER.test(text[start - 1])) return null;
  const name = candidate.slice(1).replace(/\.+$/u, '');
  if (name.length < MIN_NAME || name.length > MAX_NAME) return null;
  return { kind: 'mention', text: `@${name}`, name };
}

function count(text, character) {
  return text.split(character).length - 1;
}

// Whether the text mentions the user `name`, compared without regard to
// case like usernames on the server.
export function mentionsUser(text, name) {
  if (!text || !name) return false;
  const wanted = name.toLowerCase();
  return tokenize(text).some((token) => token.kind === 'mention' && token.name.toLowerCase() === wanted);
}

// Builds the nodes of a message's content. `ownName` gets the stronger
// highlight of a mention of the reader.
export function buildContent(text, ownName) {
  const fragment = document.createDocumentFragment();
  const own = ownName?.toLowerCase();
  for (const token of tokenize(text)) {
    if (token.kind === 'text') {
      fragment.append(document.createTextNode(token.text));
    } else if (token.kind === 'link') {
      const link = createElement('a', 'message-link', token.text);
      link.href = token.href;
      link.target = '_blank';
      link.rel = 'noopener noreferrer nofollow';
      fragment.append(link);
    } else {
      const className = token.name.toLowerCase() === own ? 'mention mention-self' : 'mention';
      fragment.append(createElement('span', className, token.text));
    }
  }
  return fragment;
}
