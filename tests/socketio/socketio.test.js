// The real socket.io-client 4.8 (and the seed's WebSocketClient class, unmodified) against a
// real parley node. Run: tests/socketio/run.sh (or `node --test` in this folder).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import WebSocket from 'ws';
import { WebSocketClient } from './seed-client.js';
import { ParleyNode, token, nextEvent, eventually } from './harness.js';

// The seed's class logs every lifecycle event; keep the test output readable.
const quiet = { log: console.log, error: console.error };
before(() => {
  console.log = () => {};
  console.error = () => {};
});
after(() => {
  console.log = quiet.log;
  console.error = quiet.error;
});

let node;
before(async () => {
  node = await ParleyNode.start();
});
after(async () => {
  await node?.close();
});

let roomNo = 0;
const room = () => `sio-${process.pid}-${++roomNo}`;

/** A seed client, connected. */
async function seedClient(user, url = node.url) {
  const c = new WebSocketClient(url, token(user, user.toUpperCase()));
  if (!c.socket.connected) await nextEvent(c.socket, 'connect');
  return c;
}

/** A plain socket.io client with options, connected. */
async function sioClient(user, opts = {}, url = node.url) {
  const s = io(url, { auth: { token: token(user, user.toUpperCase()) }, reconnection: false, ...opts });
  await nextEvent(s, 'connect');
  return s;
}

test('the seed client connects with a token, joins, sends with an ack and others see it', async () => {
  const r = room();
  const alice = await seedClient('alice');
  const bob = await seedClient('bob');
  try {
    const history = nextEvent(alice.socket, 'messageHistory');
    const joined = await alice.emit('joinRoom', { roomId: r });
    assert.equal(joined.roomId, r);
    assert.ok(Array.isArray(await history), 'messageHistory carries the messages array');

    const userJoined = nextEvent(alice.socket, 'userJoined');
    const bobHistory = nextEvent(bob.socket, 'messageHistory');
    await bob.emit('joinRoom', { roomId: r });
    await bobHistory;
    const j = await userJoined;
    assert.equal(j.userId, 'bob');
    assert.equal(j.username, 'BOB');

    const onBob = nextEvent(bob.socket, 'newMessage');
    const msg = await alice.emit('sendMessage', { text: 'Hello!', roomId: r });
    assert.equal(msg.text, 'Hello!');
    assert.equal(msg.roomId, r);
    assert.equal(msg.userId, 'alice');
    assert.equal(msg.seq, 1);
    assert.equal(msg.id, `${r}:1`);
    const seen = await onBob;
    assert.deepEqual(seen, msg);

    // A new joiner gets the history (the seed's shape: an array of messages).
    const carol = await seedClient('carol');
    try {
      const h = nextEvent(carol.socket, 'messageHistory');
      await carol.emit('joinRoom', { roomId: r });
      const messages = await h;
      assert.equal(messages.length, 1);
      assert.equal(messages[0].text, 'Hello!');
    } finally {
      carol.disconnect();
    }

    const typing = nextEvent(bob.socket, 'userTyping');
    assert.deepEqual(await alice.emit('typing', { roomId: r, isTyping: true }), {});
    const t = await typing;
    assert.equal(t.userId, 'alice');
    assert.equal(t.isTyping, true);

    // The seed's markRead shape: {roomId, messageIds}.
    const read = nextEvent(alice.socket, 'messagesRead');
    const ack = await bob.emit('markRead', { roomId: r, messageIds: [msg.id] });
    assert.deepEqual(ack, { roomId: r, upToSeq: 1 });
    const rd = await read;
    assert.equal(rd.userId, 'bob');
    assert.equal(rd.upToSeq, 1);

    const left = nextEvent(alice.socket, 'userLeft');
    assert.deepEqual(await bob.emit('leaveRoom', { roomId: r }), { roomId: r });
    assert.equal((await left).userId, 'bob');
  } finally {
    alice.disconnect();
    bob.disconnect();
  }
});

test('errors reach the ack callback as {error: {code, message}}', async () => {
  const alice = await seedClient('alice');
  try {
    const res = await alice.emit('sendMessage', { text: 'x', roomId: room() });
    assert.equal(res.error.code, 'not_in_room');
    const bad = await alice.emit('joinRoom', { roomId: 'has space' });
    assert.equal(bad.error.code, 'invalid_payload');
    const unknown = await alice.emit('noSuchEvent', {});
    assert.equal(unknown.error.code, 'unknown_event');
  } finally {
    alice.disconnect();
  }
});

test('a disconnect is userLeft for the others', async () => {
  const r = room();
  const alice = await seedClient('alice');
  const bob = await seedClient('bob');
  try {
    await alice.emit('joinRoom', { roomId: r });
    await bob.emit('joinRoom', { roomId: r });
    const left = nextEvent(alice.socket, 'userLeft');
    bob.disconnect();
    const l = await left;
    assert.equal(l.userId, 'bob');
    assert.equal(l.roomId, r);
  } finally {
    alice.disconnect();
    bob.disconnect();
  }
});

test('a bad token is refused with connect_error "Authentication failed"', async () => {
  for (const t of ['not-a-jwt', token('mallory', 'M', { secret: 'wrong-secret' }), token('old', 'O', { expSecs: -3600 })]) {
    const c = new WebSocketClient(node.url, t);
    try {
      let hook;
      const viaHook = new Promise((r) => (hook = r));
      c.onError = hook;
      const err = await nextEvent(c.socket, 'connect_error');
      assert.equal(err.message, 'Authentication failed');
      assert.equal((await viaHook).message, 'Authentication failed');
      assert.equal(c.socket.connected, false);
    } finally {
      c.disconnect();
    }
  }
  // No token at all.
  const s = io(node.url, { reconnection: false });
  try {
    const err = await nextEvent(s, 'connect_error');
    assert.equal(err.message, 'Authentication failed');
  } finally {
    s.disconnect();
  }
});

for (const transports of [['polling'], ['websocket'], ['polling', 'websocket']]) {
  test(`transports ${JSON.stringify(transports)}: chat works`, async () => {
    const r = room();
    const tag = transports.join('-');
    const a = await sioClient(`ann-${tag}`, { transports });
    const b = await sioClient(`ben-${tag}`, { transports });
    try {
      if (transports.length === 2) {
        // The default: polling first, then the upgrade to websocket.
        await eventually(() => a.io.engine.transport.name === 'websocket', 5000, 'upgrade');
      } else {
        assert.equal(a.io.engine.transport.name, transports[0]);
      }
      await a.timeout(5000).emitWithAck('joinRoom', { roomId: r });
      await b.timeout(5000).emitWithAck('joinRoom', { roomId: r });
      const got = nextEvent(b, 'newMessage');
      const msgs = [];
      for (let i = 0; i < 20; i++) {
        msgs.push(a.timeout(5000).emitWithAck('sendMessage', { roomId: r, text: `m${i}` }));
      }
      const acks = await Promise.all(msgs);
      assert.deepEqual(acks.map((m) => m.text), msgs.map((_, i) => `m${i}`));
      assert.equal((await got).text, 'm0');
      const page = await b.timeout(5000).emitWithAck('history', { roomId: r, limit: 50 });
      assert.equal(page.messages.length, 20);
    } finally {
      a.disconnect();
      b.disconnect();
    }
  });
}

test('the client reconnects by itself after the node restarts', async () => {
  const own = await ParleyNode.start();
  const c = new WebSocketClient(own.url, token('rita', 'Rita'));
  try {
    await nextEvent(c.socket, 'connect');
    const r = room();
    await c.emit('joinRoom', { roomId: r });
    await c.emit('sendMessage', { roomId: r, text: 'before' });
    const disconnected = nextEvent(c.socket, 'disconnect');
    const reconnectedEngine = nextEvent(c.socket.io, 'reconnect', 20000);
    await own.restart();
    assert.equal(await disconnected, 'transport close');
    const reconnected = nextEvent(c.socket, 'connect', 20000);
    await reconnectedEngine;
    if (!c.socket.connected) await reconnected;
    assert.ok(c.socket.connected);
    const h = nextEvent(c.socket, 'messageHistory');
    await c.emit('joinRoom', { roomId: r });
    assert.deepEqual((await h).map((m) => m.text), ['before']);
    const m = await c.emit('sendMessage', { roomId: r, text: 'after' });
    assert.equal(m.seq, 2);
  } finally {
    c.disconnect();
    await own.close();
  }
});

test('a /ws client and a Socket.IO client in one room see each other', async () => {
  const r = room();
  const sio = await seedClient('sam');
  const ws = new WebSocket(`ws://${node.addr}/ws?token=${token('wes', 'Wes')}`);
  const frames = [];
  const waiters = [];
  ws.on('message', (d) => {
    const f = JSON.parse(d.toString());
    frames.push(f);
    for (const w of waiters.splice(0)) w();
  });
  const wsNext = async (pred) => {
    const deadline = Date.now() + 5000;
    for (;;) {
      const i = frames.findIndex(pred);
      if (i >= 0) return frames.splice(i, 1)[0];
      if (Date.now() > deadline) throw new Error('no matching /ws frame');
      await new Promise((res) => {
        waiters.push(res);
        setTimeout(res, 100);
      });
    }
  };
  try {
    await new Promise((res, rej) => {
      ws.once('open', res);
      ws.once('error', rej);
    });
    await sio.emit('joinRoom', { roomId: r });
    const joined = nextEvent(sio.socket, 'userJoined');
    ws.send(JSON.stringify({ event: 'joinRoom', data: { roomId: r }, id: 1 }));
    await wsNext((f) => f.ack === 1);
    assert.equal((await joined).userId, 'wes');

    const onSio = nextEvent(sio.socket, 'newMessage');
    ws.send(JSON.stringify({ event: 'sendMessage', data: { roomId: r, text: 'from ws' }, id: 2 }));
    assert.equal((await onSio).text, 'from ws');

    await sio.emit('sendMessage', { roomId: r, text: 'from socket.io' });
    const push = await wsNext((f) => f.event === 'newMessage' && f.data.text === 'from socket.io');
    assert.equal(push.data.userId, 'sam');

    const typing = wsNext((f) => f.event === 'userTyping');
    await sio.emit('typing', { roomId: r, isTyping: true });
    assert.equal((await typing).data.userId, 'sam');
  } finally {
    sio.disconnect();
    ws.close();
  }
});

test('binary payloads are refused with binary_not_supported', async () => {
  const a = await sioClient('bin', { transports: ['websocket'] });
  try {
    const r = room();
    await a.timeout(5000).emitWithAck('joinRoom', { roomId: r });
    const res = await a.timeout(5000).emitWithAck('sendMessage', { roomId: r, text: 'x', blob: Buffer.from([1, 2, 3]) });
    assert.equal(res.error.code, 'binary_not_supported');
    // The socket still works.
    const ok = await a.timeout(5000).emitWithAck('sendMessage', { roomId: r, text: 'after binary' });
    assert.equal(ok.text, 'after binary');
  } finally {
    a.disconnect();
  }
});

test('CORS: an allowed origin is reflected on polling, a preflight is answered', async () => {
  const res = await fetch(`${node.url}/socket.io/?EIO=4&transport=polling`, { headers: { Origin: 'http://app.example' } });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('access-control-allow-origin'), 'http://app.example');
  assert.equal(res.headers.get('access-control-allow-credentials'), 'true');
  const body = await res.text();
  const open = JSON.parse(body.slice(1));
  assert.equal(open.pingInterval, 25000);
  assert.equal(open.pingTimeout, 60000);
  assert.deepEqual(open.upgrades, ['websocket']);
  const pre = await fetch(`${node.url}/socket.io/?EIO=4&transport=polling`, {
    method: 'OPTIONS',
    headers: { Origin: 'http://app.example', 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type' },
  });
  assert.equal(pre.status, 204);
  assert.match(pre.headers.get('access-control-allow-methods'), /POST/);
});

test('CORS: an origin outside allowed_origins is refused', async () => {
  const own = await ParleyNode.start(['--set', 'allowed_origins=["http://good.example"]']);
  try {
    const ok = await fetch(`${own.url}/socket.io/?EIO=4&transport=polling`, { headers: { Origin: 'http://good.example' } });
    assert.equal(ok.status, 200);
    assert.equal(ok.headers.get('access-control-allow-origin'), 'http://good.example');
    const bad = await fetch(`${own.url}/socket.io/?EIO=4&transport=polling`, { headers: { Origin: 'http://evil.example' } });
    assert.equal(bad.status, 403);
    assert.equal(bad.headers.get('access-control-allow-origin'), null);
  } finally {
    await own.close();
  }
});
