// Small helpers shared by the modules of the web client. No DOM access.

// Message ids and revs are u64 decimal strings without leading zeros,
// beyond the exact range of Number. For such strings the shorter one is the
// smaller number, and strings of one length compare like the numbers.
export function compareIds(left, right) {
  const a = String(left);
  const b = String(right);
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  if (a === b) return 0;
  return a < b ? -1 : 1;
}

export function maxId(left, right) {
  if (left === null || left === undefined) return right ?? null;
  if (right === null || right === undefined) return left;
  return compareIds(left, right) >= 0 ? left : right;
}

// crypto.randomUUID exists only in secure contexts (https, localhost), but a
// self-hosted server may be reached over plain http on a LAN.
export function createNonce() {
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
}

// Resolves after ms, or rejects with the abort reason when the signal aborts first.
export function sleep(ms, signal) {
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

export function isAbortError(error) {
  return error instanceof DOMException && error.name === 'AbortError';
}

export function parseJson(text) {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

// The server trims content with Rust's str::trim, which strips characters
// with the Unicode White_Space property. String.prototype.trim also strips
// U+FEFF, which Rust keeps, so the page uses the same property instead.
const LEADING_OR_TRAILING_SPACE = /^\p{White_Space}+|\p{White_Space}+$/gu;

export function trimLikeServer(text) {
  return text.replace(LEADING_OR_TRAILING_SPACE, '');
}

// Unicode scalar values, the unit of --max-message-chars. A string iterator
// yields code points, and a lone surrogate counts as one, as the server
// would count its replacement character.
export function countScalarValues(text) {
  let count = 0;
  for (const _ of text) count += 1;
  return count;
}

// The server rejects control characters (Unicode category Cc) other than
// newline and tab.
const FORBIDDEN_CONTROL = /[\u0000-\u0008\u000B-\u001F\u007F-\u009F]/u;

export function hasForbiddenControl(text) {
  return FORBIDDEN_CONTROL.test(text);
}

// Local calendar day of a timestamp in ms, such as "2026-03-04", for date
// separators.
export function dayKey(ms) {
  const date = new Date(Number(ms));
  if (Number.isNaN(date.getTime())) return '';
  const month = String(date.getMonth() + 1).padStart(2, '0');
  const day = String(date.getDate()).padStart(2, '0');
  return `${date.getFullYear()}-${month}-${day}`;
}

export function formatDay(ms, now = new Date()) {
  const date = new Date(Number(ms));
  if (Number.isNaN(date.getTime())) return '';
  const today = dayKey(now.getTime());
  const yesterday = dayKey(new Date(now.getFullYear(), now.getMonth(), now.getDate() - 1).getTime());
  const key = dayKey(ms);
  if (key === today) return 'Today';
  if (key === yesterday) return 'Yesterday';
  return date.toLocaleDateString([], { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
}

export function formatClock(ms) {
  const date = new Date(Number(ms));
  if (Number.isNaN(date.getTime())) return '';
  return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

export function formatDateTime(ms) {
  const date = new Date(Number(ms));
  if (Number.isNaN(date.getTime())) return '';
  return date.toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' });
}

// "3 s", "2 min": a wait in ms, rounded up, for rate-limit messages.
export function formatWait(ms) {
  const seconds = Math.max(1, Math.ceil(ms / 1000));
  if (seconds < 60) return `${seconds} s`;
  return `${Math.ceil(seconds / 60)} min`;
}
