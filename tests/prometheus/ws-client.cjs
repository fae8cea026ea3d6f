// One native-protocol WebSocket session for tests/prometheus/run.sh: connects to
// ws://ADDR/ws?token=TOKEN, joins `lobby`, sends one message, prints `READY` once both acks
// arrived, then stays connected (so the connection gauge stays at 1) until it gets SIGTERM
// or MAX_SECS pass. Every failure exits non-zero with a reason on stderr.
//
// Usage: node ws-client.cjs ADDR TOKEN [MAX_SECS]
// Uses the `ws` package of tests/socketio/node_modules when present, else node's built-in
// WebSocket (node >= 22, or node 20/21 with --experimental-websocket).
'use strict';
const path = require('node:path');

const [addr, token, maxSecs = '90'] = process.argv.slice(2);
if (!addr || !token) {
  console.error('usage: node ws-client.cjs ADDR TOKEN [MAX_SECS]');
  process.exit(2);
}

let WS;
try {
  WS = require(path.join(__dirname, '..', 'socketio', 'node_modules', 'ws'));
} catch {
  WS = globalThis.WebSocket;
}
if (typeof WS !== 'function') {
  console.error('ws-client: no WebSocket implementation (npm ci in tests/socketio, or node >= 22)');
  process.exit(2);
}

const die = (msg) => {
  console.error(`ws-client: ${msg}`);
  process.exit(1);
};
const guard = setTimeout(() => die(`still running after ${maxSecs}s; giving up`), Number(maxSecs) * 1000);
process.on('SIGTERM', () => {
  clearTimeout(guard);
  process.exit(0);
});

const ws = new WS(`ws://${addr}/ws?token=${encodeURIComponent(token)}`);
const send = (obj) => ws.send(JSON.stringify(obj));
let ready = false;

ws.onopen = () => send({ event: 'joinRoom', data: { roomId: 'lobby' }, id: 1 });
ws.onerror = (ev) => die(`websocket error: ${ev && (ev.message || (ev.error && ev.error.message)) || ev}`);
ws.onclose = (ev) => die(`websocket closed by the server (code ${ev.code}${ev.reason ? `, ${ev.reason}` : ''})`);
ws.onmessage = (ev) => {
  let frame;
  try {
    frame = JSON.parse(String(ev.data));
  } catch {
    return die(`not JSON: ${String(ev.data).slice(0, 200)}`);
  }
  if (frame.ack === undefined) return; // pushes (messageHistory, newMessage, userJoined...)
  if (frame.error) return die(`request ${frame.ack} failed: ${JSON.stringify(frame.error)}`);
  if (frame.ack === 1) {
    send({ event: 'sendMessage', data: { roomId: 'lobby', text: 'hi' }, id: 2 });
  } else if (frame.ack === 2 && !ready) {
    ready = true;
    console.log(`READY seq=${frame.data && frame.data.seq}`);
  }
};
