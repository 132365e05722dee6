// Baseline for the Aura load generator: a Node.js WebSocket server built on
// the `ws` package. It authenticates nothing, stores nothing, and broadcasts
// each `send` to the subscribers of its channel. Its JSON frames are Aura's
// (`ready`, `heartbeat_ack`, `subscribed`, `message`, `ack`, `error`), so
// that one load generator drives both servers.
//
// Usage: node server.js [--listen HOST:PORT]
// It logs "listening on HOST:PORT" to stderr once it accepts connections.

'use strict';

const http = require('node:http');
const { WebSocketServer } = require('ws');

const HEARTBEAT_MS = 4000;

function parseListen(argv) {
  const index = argv.indexOf('--listen');
  const value = index >= 0 ? argv[index + 1] : '127.0.0.1:0';
  const colon = value.lastIndexOf(':');
  if (colon < 0) {
    throw new Error(`--listen ${value} is invalid: expected HOST:PORT`);
  }
  return { host: value.slice(0, colon), port: Number(value.slice(colon + 1)) };
}

// Message ids like Aura's: milliseconds since the epoch in the high 48
// bits, a counter in the low 16, strictly increasing, sent as decimal strings.
let lastId = 0n;
function nextId() {
  const clock = BigInt(Date.now()) << 16n;
  lastId = clock > lastId ? clock : lastId + 1n;
  return lastId;
}

const epoch = nextId().toString(16).padStart(16, '0');
let nextUser = 1;

/** Subscribers by channel id (the string clients send). */
const channels = new Map();

function frame(object) {
  return JSON.stringify(object);
}

function errorFrame(code, message, nonce) {
  const body = { op: 'error', code, message };
  if (nonce !== undefined) {
    body.nonce = nonce;
  }
  return frame(body);
}

function subscribe(socket, channel) {
  let subscribers = channels.get(channel);
  if (!subscribers) {
    subscribers = new Set();
    channels.set(channel, subscribers);
  }
  subscribers.add(socket);
  socket.subscriptions.add(channel);
  socket.send(frame({ op: 'subscribed', channel, messages: [], gap: false }));
}

function unsubscribe(socket, channel) {
  const subscribers = channels.get(channel);
  if (subscribers) {
    subscribers.delete(socket);
  }
  socket.subscriptions.delete(channel);
}

function send(socket, request) {
  const { channel, content, nonce } = request;
  if (typeof channel !== 'string' || typeof content !== 'string' || typeof nonce !== 'string') {
    socket.send(errorFrame('bad_request', 'send needs channel, content and nonce strings', nonce));
    return;
  }
  const id = nextId().toString();
  const ts = Date.now();
  const message = {
    id,
    rev: id,
    channel,
    author: { id: socket.user.id, name: socket.user.name },
    content: content.trim(),
    ts,
    edited_ts: null,
    nonce,
    deleted: false,
  };
  // Serialize once and write the same string to every subscriber.
  const broadcast = frame({ op: 'message', message });
  const subscribers = channels.get(channel);
  if (subscribers) {
    for (const subscriber of subscribers) {
      subscriber.send(broadcast);
    }
  }
  socket.send(frame({ op: 'ack', nonce, id, rev: id }));
}

function handle(socket, data, isBinary) {
  if (isBinary) {
    socket.send(errorFrame('bad_request', 'binary frames are not supported: send JSON text'));
    return;
  }
  let request;
  try {
    request = JSON.parse(data.toString());
  } catch (error) {
    socket.send(errorFrame('bad_request', `invalid frame: ${error.message}`));
    return;
  }
  switch (request.op) {
    case 'heartbeat':
      socket.send('{"op":"heartbeat_ack"}');
      break;
    case 'subscribe':
      subscribe(socket, String(request.channel));
      break;
    case 'unsubscribe':
      unsubscribe(socket, String(request.channel));
      break;
    case 'send':
      send(socket, request);
      break;
    default:
      socket.send(errorFrame('bad_request', `operation ${request.op} is not supported by the baseline`, request.nonce));
  }
}

function main() {
  const { host, port } = parseListen(process.argv);
  const server = http.createServer((request, response) => {
    response.writeHead(404, { 'content-type': 'application/json' });
    response.end(frame({ error: { code: 'not_found', message: 'only /ws is served' } }));
  });
  const sockets = new WebSocketServer({ server, path: '/ws', perMessageDeflate: false, clientTracking: false });

  sockets.on('connection', (socket) => {
    const userNumber = nextUser++;
    socket.user = { id: String(userNumber), name: `guest${userNumber}` };
    socket.subscriptions = new Set();
    socket.on('message', (data, isBinary) => handle(socket, data, isBinary));
    socket.on('close', () => {
      for (const channel of socket.subscriptions) {
        const subscribers = channels.get(channel);
        if (subscribers) {
          subscribers.delete(socket);
        }
      }
    });
    socket.on('error', (error) => console.error(`socket error: ${error.message}`));
    socket.send(
      frame({
        op: 'ready',
        epoch,
        user: { id: socket.user.id, name: socket.user.name, role: 'member' },
        heartbeat_ms: HEARTBEAT_MS,
        layout: { version: 1, categories: [] },
      }),
    );
  });

  server.listen(port, host, () => {
    const address = server.address();
    console.error(`listening on ${address.address}:${address.port}`);
  });

  const stop = () => {
    sockets.close();
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

main();
