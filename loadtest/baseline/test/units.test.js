// Unit tests of the baseline's own code: token checks and the in-process Redis stand-in.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { verifyToken } from '../jwt.js';
import { MemoryStore } from '../memory-store.js';

const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
const sign = (claims, secret = 's', header = { alg: 'HS256', typ: 'JWT' }) => {
  const body = `${b64(header)}.${b64(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
};
const later = () => Math.floor(Date.now() / 1000) + 60;

test('tokens with Parley claims verify; forged, expired and other algorithms do not', async () => {
  assert.deepEqual(await verifyToken(sign({ sub: 'u1', name: 'Ann', exp: later() }), 's'),
    { id: 'u1', username: 'Ann' });
  assert.deepEqual(await verifyToken(sign({ sub: 'u2', exp: later() }), 's'),
    { id: 'u2', username: 'u2' });
  await assert.rejects(verifyToken(sign({ sub: 'u', exp: later() }, 'other'), 's'));
  await assert.rejects(verifyToken(sign({ sub: 'u', exp: 1000 }), 's'));
  await assert.rejects(verifyToken(sign({ sub: 'u' }), 's'));
  await assert.rejects(verifyToken(sign({ exp: later() }), 's'));
  await assert.rejects(verifyToken(sign({ sub: 'u', exp: later() }, 's', { alg: 'none' }), 's'));
  await assert.rejects(verifyToken(undefined, 's'));
  await assert.rejects(verifyToken('a.b', 's'));
});

test('the memory store answers like Redis for the commands the server uses', async () => {
  const r = new MemoryStore();
  assert.equal(await r.sadd('s', 'a'), 1);
  assert.equal(await r.sadd('s', 'a'), 0);
  await r.sadd('s', 'b');
  assert.equal(await r.srem('s', 'a'), 1);
  assert.deepEqual(await r.smembers('s'), ['b']);
  for (const [score, m] of [[3, 'c'], [1, 'a'], [2, 'b'], [2, 'a2'], [4, 'd']]) await r.zadd('z', score, m);
  assert.equal(await r.zadd('z', 5, 'a'), 0); // re-scored, not duplicated
  assert.deepEqual(await r.zrevrange('z', 0, 2), ['a', 'd', 'c']);
  assert.deepEqual(await r.zrevrange('z', 0, -1), ['a', 'd', 'c', 'b', 'a2']);
  assert.deepEqual(await r.zrevrange('none', 0, 49), []);
});
