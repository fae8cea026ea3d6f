// Abandoned polling sessions are freed within pingInterval + pingTimeout, and memory stays flat
// under connect/abandon churn (socketioxide leaked 19 GiB in production exactly here).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ParleyNode, token, eventually } from './harness.js';

const ROUNDS = Number(process.env.CHURN_ROUNDS || 4);
const PER_ROUND = Number(process.env.CHURN_PER_ROUND || 400);

function rssKiB(pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
  return Number(m[1]);
}

/** Opens a polling session; half of them also authenticate (CONNECT) and join a room. */
async function openAndAbandon(url, i) {
  const res = await fetch(`${url}/socket.io/?EIO=4&transport=polling`);
  const open = JSON.parse((await res.text()).slice(1));
  if (i % 2 === 0) {
    const q = `${url}/socket.io/?EIO=4&transport=polling&sid=${open.sid}`;
    const auth = JSON.stringify({ token: token(`churn${i % 50}`) });
    const join = JSON.stringify(['joinRoom', { roomId: `churn-${i % 10}` }]);
    const post = await fetch(q, { method: 'POST', body: `40${auth}\u001e421${join}`, headers: { 'Content-Type': 'text/plain;charset=UTF-8' } });
    assert.equal(await post.text(), 'ok');
    const got = await (await fetch(q)).text();
    assert.match(got, /^40\{"sid"/);
  }
  // Then the client vanishes: no more polls, no close packet.
}

test('abandoned polling sessions are freed and memory stays flat', async (t) => {
  // pingInterval 1 s, pingTimeout 2 s: an abandoned session must be gone within 3 s.
  const node = await ParleyNode.start(['--set', 'heartbeat_interval="1s"', '--set', 'client_timeout="2s"']);
  try {
    const rss = [];
    for (let round = 0; round < ROUNDS; round++) {
      for (let i = 0; i < PER_ROUND; i += 50) {
        const batch = [];
        for (let j = i; j < Math.min(i + 50, PER_ROUND); j++) batch.push(openAndAbandon(node.url, j));
        await Promise.all(batch);
      }
      assert.ok((await node.metric('parley_engineio_sessions')) > 0, 'sessions are counted');
      const t0 = Date.now();
      await eventually(async () => (await node.metric('parley_engineio_sessions')) === 0, 10000, 'engine.io sessions back to 0');
      const freedMs = Date.now() - t0;
      await eventually(async () => (await node.metric('parley_hub_sessions')) === 0, 5000, 'hub sessions back to 0');
      assert.ok(freedMs <= 3000 + 1500, `freed in ${freedMs} ms (pingInterval + pingTimeout = 3000 ms)`);
      rss.push(rssKiB(node.child.pid));
      t.diagnostic(`round ${round + 1}: ${PER_ROUND} sessions abandoned, all freed ${freedMs} ms after the last was opened, RSS ${rss[rss.length - 1]} KiB`);
    }
    // After the first round has warmed up allocator and caches, RSS must not keep growing.
    const growth = rss[rss.length - 1] - rss[0];
    assert.ok(growth < 8 * 1024, `RSS grew ${growth} KiB over ${ROUNDS - 1} rounds: ${rss.join(', ')} KiB`);
  } finally {
    await node.close();
  }
});
