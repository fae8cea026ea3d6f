// Browser tests: headless Debian Chromium, driven by playwright-core, runs the page-side code a
// web client would (the WebSocket API with the token as a subprotocol, and socket.io-client's
// browser bundle over polling upgraded to WebSocket, cross-origin) against a real parley node.
// Two pages per test: one sends, the other must see it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

import { ParleyNode, token } from '../socketio/harness.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// Chromium's own background connections would be refused on this closed network.
const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const PAGE_WAIT = 5000;

let browser;
let site; // the web app's origin: a page and the socket.io-client bundle
let siteUrl;

before(async () => {
  const bundle = readFileSync(
    path.join(here, 'node_modules', 'socket.io-client', 'dist', 'socket.io.min.js'),
  );
  site = createServer((req, res) => {
    if (req.url === '/socket.io.min.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      res.end(bundle);
    } else {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<!doctype html><title>parley browser test</title><script src="/socket.io.min.js"></script>');
    }
  });
  await new Promise((resolve) => site.listen(0, '127.0.0.1', resolve));
  siteUrl = `http://127.0.0.1:${site.address().port}/`;
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true });
});

after(async () => {
  await browser?.close();
  await new Promise((resolve) => site?.close(resolve));
});

/** A fresh page of the web app (its own browser context: no shared state between users). */
async function page() {
  const ctx = await browser.newContext();
  const p = await ctx.newPage();
  await p.goto(siteUrl);
  return p;
}

let rooms = 0;
const room = () => `browser-${process.pid}-${++rooms}`;

/** Page side of the native protocol: opens `/ws` with the token as a subprotocol and keeps the
 * frames it receives in `window.frames_`. */
async function openNative(p, wsUrl, tok) {
  return p.evaluate(
    ({ wsUrl, tok, wait }) =>
      new Promise((resolve) => {
        const ws = new WebSocket(wsUrl, ['bearer', tok]);
        window.ws_ = ws;
        window.frames_ = [];
        ws.onmessage = (e) => window.frames_.push(JSON.parse(e.data));
        const timer = setTimeout(() => resolve({ open: false, why: 'timeout' }), wait);
        ws.onopen = () => {
          clearTimeout(timer);
          resolve({ open: true, protocol: ws.protocol });
        };
        ws.onclose = (e) => {
          clearTimeout(timer);
          resolve({ open: false, code: e.code });
        };
      }),
    { wsUrl, tok, wait: PAGE_WAIT },
  );
}

/** Page side: sends a request and waits for its ack frame. */
async function request(p, id, event, data) {
  return p.evaluate(
    ({ id, event, data, wait }) =>
      new Promise((resolve, reject) => {
        window.ws_.send(JSON.stringify({ event, data, id }));
        const deadline = Date.now() + wait;
        const look = () => {
          const ack = window.frames_.find((f) => f.ack === id);
          if (ack) return resolve(ack);
          if (Date.now() > deadline) return reject(new Error(`no ack for ${event}`));
          setTimeout(look, 10);
        };
        look();
      }),
    { id, event, data, wait: PAGE_WAIT },
  );
}

/** Page side: waits for a pushed event matching `roomId`. */
async function pushed(p, event, roomId) {
  return p.evaluate(
    ({ event, roomId, wait }) =>
      new Promise((resolve, reject) => {
        const deadline = Date.now() + wait;
        const look = () => {
          const f = window.frames_.find((f) => f.event === event && f.data?.roomId === roomId);
          if (f) return resolve(f.data);
          if (Date.now() > deadline) return reject(new Error(`no ${event} push`));
          setTimeout(look, 10);
        };
        look();
      }),
    { event, roomId, wait: PAGE_WAIT },
  );
}

test('a browser speaks /ws with the token as a subprotocol', async () => {
  const node = await ParleyNode.start();
  const [alice, bob] = [await page(), await page()];
  try {
    const wsUrl = `ws://${node.addr}/ws`;
    const a = await openNative(alice, wsUrl, token('alice', 'Alice'));
    assert.deepEqual(a, { open: true, protocol: 'bearer' }, 'the server answers the subprotocol');
    assert.equal((await openNative(bob, wsUrl, token('bob', 'Bob'))).open, true);

    const r = room();
    const joined = await request(alice, 1, 'joinRoom', { roomId: r });
    assert.equal(joined.data.roomId, r);
    assert.equal((await request(bob, 1, 'joinRoom', { roomId: r })).data.roomId, r);
    const seenJoin = await pushed(alice, 'userJoined', r);
    assert.equal(seenJoin.userId, 'bob');

    const sent = await request(alice, 2, 'sendMessage', { roomId: r, text: 'from a browser ✓' });
    assert.equal(sent.data.seq, 1);
    const got = await pushed(bob, 'newMessage', r);
    assert.deepEqual(got, sent.data);
    assert.equal(got.text, 'from a browser ✓');
    assert.equal(got.username, 'Alice');

    // Bad input from a page gets an error answer; the connection stays.
    const err = await request(alice, 3, 'sendMessage', { roomId: r });
    assert.equal(err.error.code, 'invalid_payload');
    assert.equal((await request(alice, 4, 'typing', { roomId: r, isTyping: true })).ack, 4);
  } finally {
    await alice.context().close();
    await bob.context().close();
    await node.stop();
  }
});

test('a browser with a bad token is refused before the upgrade', async () => {
  const node = await ParleyNode.start();
  const p = await page();
  try {
    const forged = token('mallory', 'M', { secret: 'not-the-secret-0123456789abcdefgh' });
    const r = await openNative(p, `ws://${node.addr}/ws`, forged);
    assert.equal(r.open, false);
    assert.equal(r.code, 1006, 'the handshake failed (401): no WebSocket was opened');
  } finally {
    await p.context().close();
    await node.stop();
  }
});

test("socket.io-client's browser bundle connects cross-origin over polling, upgrades, chats", async () => {
  const node = await ParleyNode.start();
  const [alice, bob] = [await page(), await page()];
  const connect = (p, tok) =>
    p.evaluate(
      ({ url, tok, wait }) =>
        new Promise((resolve) => {
          // Default transports: long-polling first (cross-origin XHR: CORS), then WebSocket.
          const socket = io(url, { auth: { token: tok }, reconnection: false });
          window.sock_ = socket;
          window.events_ = [];
          socket.onAny((event, data) => window.events_.push({ event, data }));
          const timer = setTimeout(
            () =>
              resolve({
                connected: socket.connected,
                why: 'timeout',
                transport: socket.io.engine?.transport?.name,
              }),
            wait,
          );
          socket.on('connect_error', (e) => {
            clearTimeout(timer);
            resolve({ connected: false, why: e.message });
          });
          const upgraded = () => {
            clearTimeout(timer);
            resolve({ connected: true, transport: socket.io.engine.transport.name });
          };
          socket.on('connect', () => {
            // The upgrade may have happened before the CONNECT answer arrived.
            if (socket.io.engine.transport.name === 'websocket') upgraded();
            else socket.io.engine.once('upgrade', upgraded);
          });
        }),
      { url: node.url, tok, wait: PAGE_WAIT },
    );
  const emit = (p, event, data) =>
    p.evaluate(
      ({ event, data, wait }) =>
        new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`no ack for ${event}`)), wait);
          window.sock_.emit(event, data, (answer) => {
            clearTimeout(timer);
            resolve(answer);
          });
        }),
      { event, data, wait: PAGE_WAIT },
    );
  const seen = (p, event) =>
    p.evaluate(
      ({ event, wait }) =>
        new Promise((resolve, reject) => {
          const deadline = Date.now() + wait;
          const look = () => {
            const e = window.events_.find((e) => e.event === event);
            if (e) return resolve(e.data);
            if (Date.now() > deadline) return reject(new Error(`no ${event}`));
            setTimeout(look, 10);
          };
          look();
        }),
      { event, wait: PAGE_WAIT },
    );
  try {
    assert.deepEqual(await connect(alice, token('alice', 'Alice')), {
      connected: true,
      transport: 'websocket',
    });
    assert.equal((await connect(bob, token('bob', 'Bob'))).connected, true);
    const r = room();
    assert.equal((await emit(alice, 'joinRoom', { roomId: r })).roomId, r);
    assert.equal((await emit(bob, 'joinRoom', { roomId: r })).roomId, r);
    const msg = await emit(alice, 'sendMessage', { roomId: r, text: 'hello from socket.io in a browser' });
    assert.equal(msg.seq, 1);
    assert.deepEqual(await seen(bob, 'newMessage'), msg);
    const err = await emit(alice, 'sendMessage', { roomId: 'not joined' });
    assert.ok(err.error?.code, 'errors reach the ack callback');

    // A bad token: connect_error, as with the seed's server.
    const mallory = await page();
    try {
      const forged = token('mallory', 'M', { secret: 'not-the-secret-0123456789abcdefgh' });
      assert.deepEqual(await connect(mallory, forged), {
        connected: false,
        why: 'Authentication failed',
      });
    } finally {
      await mallory.context().close();
    }
  } finally {
    await alice.context().close();
    await bob.context().close();
    await node.stop();
  }
});

test('a page from an origin outside allowed_origins cannot connect', async () => {
  const node = await ParleyNode.start(['--set', 'allowed_origins=["https://chat.example"]']);
  const p = await page();
  try {
    const r = await openNative(p, `ws://${node.addr}/ws`, token('alice'));
    assert.equal(r.open, false, 'refused (403) before the upgrade');
    const sio = await p.evaluate(
      ({ url, tok, wait }) =>
        new Promise((resolve) => {
          const socket = io(url, { auth: { token: tok }, reconnection: false });
          const timer = setTimeout(() => resolve('timeout'), wait);
          socket.on('connect', () => {
            clearTimeout(timer);
            resolve('connected');
          });
          socket.on('connect_error', () => {
            clearTimeout(timer);
            socket.close();
            resolve('refused');
          });
        }),
      { url: node.url, tok: token('alice'), wait: PAGE_WAIT },
    );
    assert.equal(sio, 'refused');
  } finally {
    await p.context().close();
    await node.stop();
  }
});
