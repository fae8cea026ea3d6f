// An in-process stand-in for the few Redis commands the seed's ChatServer uses, with
// ioredis' promise signatures, so one process can run without a Redis server.

export class MemoryStore {
  constructor() {
    this.sets = new Map();
    this.zsets = new Map();
  }

  async sadd(key, member) {
    let s = this.sets.get(key);
    if (!s) this.sets.set(key, (s = new Set()));
    const had = s.has(member);
    s.add(member);
    return had ? 0 : 1;
  }

  async srem(key, member) {
    return this.sets.get(key)?.delete(member) ? 1 : 0;
  }

  async smembers(key) {
    return Array.from(this.sets.get(key) ?? []);
  }

  // Entries kept in score order (equal scores: by member, as Redis does); appends are
  // the common case since scores are timestamps.
  async zadd(key, score, member) {
    let z = this.zsets.get(key);
    if (!z) this.zsets.set(key, (z = { list: [], members: new Set() }));
    const had = z.members.has(member);
    if (had) z.list.splice(z.list.findIndex((e) => e.member === member), 1);
    z.members.add(member);
    const l = z.list;
    let at = l.length;
    while (at > 0 && (l[at - 1].score > score || (l[at - 1].score === score && l[at - 1].member > member))) at--;
    l.splice(at, 0, { score, member });
    return had ? 0 : 1;
  }

  async zrevrange(key, start, stop) {
    const z = this.zsets.get(key)?.list ?? [];
    const rev = [];
    const last = stop < 0 ? z.length + stop : Math.min(stop, z.length - 1);
    for (let k = start; k <= last; k++) rev.push(z[z.length - 1 - k].member);
    return rev;
  }
}
