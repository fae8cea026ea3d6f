// HS256 JWT verification with node:crypto, for the tokens Parley accepts: claims `sub`
// (user id), `name` (display name, defaults to sub) and a required `exp`.

import { createHmac, timingSafeEqual } from 'node:crypto';

const b64json = (part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));

/** Resolves to {id, username}; rejects a malformed, forged, expired or non-HS256 token. */
export async function verifyToken(token, secret) {
  if (typeof token !== 'string') throw new Error('no token');
  const parts = token.split('.');
  if (parts.length !== 3) throw new Error('malformed token');
  const [head, body, sig] = parts;
  const header = b64json(head);
  if (header.alg !== 'HS256') throw new Error('wrong algorithm');
  const want = createHmac('sha256', secret).update(`${head}.${body}`).digest();
  const got = Buffer.from(sig, 'base64url');
  if (got.length !== want.length || !timingSafeEqual(got, want)) throw new Error('bad signature');
  const claims = b64json(body);
  if (typeof claims.exp !== 'number' || claims.exp * 1000 <= Date.now()) throw new Error('expired');
  if (typeof claims.sub !== 'string' || claims.sub === '') throw new Error('no sub');
  return { id: claims.sub, username: typeof claims.name === 'string' ? claims.name : claims.sub };
}
