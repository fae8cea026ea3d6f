// A small figure, not a test: the same chat scenario through /socket.io/ (websocket transport,
// socket.io-client) and /ws (ws). One room, RECEIVERS listeners, one sender with WINDOW sends in
// flight; reports ack latency percentiles and deliveries per second.
//   PARLEY_BIN=... node bench.js [messages=2000] [receivers=20] [window=10]
import { io } from 'socket.io-client';
import WebSocket from 'ws';
import { ParleyNode, token, nextEvent } from './harness.js';

const [N = 2000, RECEIVERS = 20, WINDOW = 10] = process.argv.slice(2).map(Number);

function pct(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

class SioPeer {
  static async open(node, user) {
    const p = new SioPeer();
    p.s = io(node.url, { auth: { token: token(user) }, transports: ['websocket'], reconnection: false });
    await nextEvent(p.s, 'connect');
    return p;
  }
  join(room) { return this.s.timeout(10000).emitWithAck('joinRoom', { roomId: room }); }
  send(room, text) { return this.s.timeout(10000).emitWithAck('sendMessage', { roomId: room, text }); }
  onMessage(f) { this.s.on('newMessage', f); }
  close() { this.s.disconnect(); }
}

class WsPeer {
  static async open(node, user) {
    const p = new WsPeer();
    p.ws = new WebSocket(`ws://${node.addr}/ws?token=${token(user)}`);
    p.next = 1;
    p.pending = new Map();
    p.listeners = [];
    p.ws.on('message', (d) => {
      const f = JSON.parse(d.toString());
      if (f.ack !== undefined) {
        const r = p.pending.get(f.ack);
        p.pending.delete(f.ack);
        r?.(f.data ?? f);
      } else if (f.event === 'newMessage') {
        for (const l of p.listeners) l(f.data);
      }
    });
    await new Promise((r, j) => { p.ws.once('open', r); p.ws.once('error', j); });
    return p;
  }
  req(event, data) {
    const id = this.next++;
    return new Promise((r) => { this.pending.set(id, r); this.ws.send(JSON.stringify({ event, data, id })); });
  }
  join(room) { return this.req('joinRoom', { roomId: room }); }
  send(room, text) { return this.req('sendMessage', { roomId: room, text }); }
  onMessage(f) { this.listeners.push(f); }
  close() { this.ws.close(); }
}

async function run(node, Peer, label) {
  const room = `bench-${label.replace(/[^a-z]/g, "")}-${Date.now()}`;
  const receivers = [];
  for (let i = 0; i < RECEIVERS; i++) {
    const p = await Peer.open(node, `r${i}`);
    await p.join(room);
    receivers.push(p);
  }
  let delivered = 0;
  let allDelivered;
  const done = new Promise((r) => (allDelivered = r));
  for (const p of receivers) p.onMessage(() => { if (++delivered === (N + 1) * RECEIVERS) allDelivered(); });
  const sender = await Peer.open(node, "sender");
  await sender.join(room);
  const acks = [];
  const t0 = performance.now();
  let next = 0;
  async function lane() {
    while (next < N) {
      const i = next++;
      const s = performance.now();
      await sender.send(room, `m${i}`);
      acks.push(performance.now() - s);
    }
  }
  const check = await sender.send(room, "warm-up");
  if (check.error || !check.seq) throw new Error(`send failed: ${JSON.stringify(check)}`);
  await Promise.all(Array.from({ length: WINDOW }, lane));
  await done;
  const secs = (performance.now() - t0) / 1000;
  for (const p of [...receivers, sender]) p.close();
  return { label, messages: N, receivers: RECEIVERS, window: WINDOW, secs: +secs.toFixed(2),
    msgPerSec: Math.round(N / secs), deliveriesPerSec: Math.round((N * RECEIVERS) / secs),
    ackP50ms: +pct(acks, 50).toFixed(2), ackP99ms: +pct(acks, 99).toFixed(2) };
}

const node = await ParleyNode.start(['--set', 'rate_limit_per_sec=1000000', '--set', 'rate_limit_burst=1000000']);
try {
  const results = [];
  for (const [Peer, label] of [[WsPeer, '/ws'], [SioPeer, '/socket.io/'], [WsPeer, '/ws'], [SioPeer, '/socket.io/']]) {
    results.push(await run(node, Peer, label));
  }
  console.table(results);
} finally {
  await node.close();
}
