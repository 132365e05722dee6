// The HTTP API: JSON requests with the session cookie.

import { isAbortError, parseJson } from './util.js';

export class ApiError extends Error {
  // status is 0 when the request got no response at all. retryAfterMs is
  // set for rate_limited errors.
  constructor(status, code, message, retryAfterMs = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
}

const NETWORK_ERROR_MESSAGE = 'Cannot reach the server. Check your connection and try again.';

// Sends a JSON request with the session cookie and returns the parsed body.
// Throws ApiError with the server's error message for any non-2xx status, and
// rethrows AbortError when the signal aborts.
export async function apiRequest(method, path, { body, signal } = {}) {
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
    const retryAfterMs = Number(error?.retry_after_ms) || null;
    throw new ApiError(
      response.status,
      error?.code ?? `http_${response.status}`,
      error?.message ?? `The server responded with status ${response.status}.`,
      retryAfterMs,
    );
  }
  return data;
}

export function channelMessagesPath(channelId) {
  return `/api/channels/${encodeURIComponent(channelId)}/messages`;
}

export function messagePath(messageId) {
  return `/api/messages/${encodeURIComponent(messageId)}`;
}
