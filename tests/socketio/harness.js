// Test harness: a real `parley` process on an ephemeral port, HS256 tokens minted with node's
// crypto, and small promise helpers. Waits are for observable events with deadlines.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');

export const SECRET = 'socketio-test-secret-0123456789abcdef';
export const WAIT = 5000;

/** The parley binary: $PARLEY_BIN, else target/debug/parley under $CARGO_TARGET_DIR or the repo. */
export function parleyBin() {
  if (process.env.PARLEY_BIN) return process.env.PARLEY_BIN;
  const target = process.env.CARGO_TARGET_DIR || path.join(repo, 'target');
  const bin = path.join(target, 'debug', 'parley');
  if (!existsSync(bin)) throw new Error(`no parley binary at ${bin}: build it or set PARLEY_BIN`);
  return bin;
}

function b64url(buf) {
  return Buffer.from(buf).toString('base64url');
}

/** An HS256 JWT with claims sub, name, exp (seconds from now). */
export function token(sub, name = sub, { secret = SECRET, expSecs = 3600 } = {}) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const claims = b64url(JSON.stringify({ sub, name, exp: Math.floor(Date.now() / 1000) + expSecs }));
  const sig = createHmac('sha256', secret).update(`${header}.${claims}`).digest('base64url');
  return `${header}.${claims}.${sig}`;
}

export class ParleyNode {
  constructor(extra) {
    this.extra = extra;
    this.data = mkdtempSync(path.join(tmpdir(), 'parley-sio-'));
    this.addr = null;
    this.child = null;
  }

  /** Starts a node with the test secret and `extra` flags. */
  static async start(extra = []) {
    const node = new ParleyNode(extra);
    await node.spawn('127.0.0.1:0');
    return node;
  }

  get url() {
    return `http://${this.addr}`;
  }

  spawn(listen) {
    const args = ['--listen', listen, '--data-dir', this.data, '--jwt-secret', SECRET, ...this.extra];
    const child = spawn(parleyBin(), args, {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
    });
    this.child = child;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('parley did not start in time')), 15000);
      const lines = createInterface({ input: child.stdout });
      lines.on('line', (line) => {
        const m = line.match(/^parley listening on (\S+)/);
        if (m) {
          clearTimeout(timer);
          this.addr = m[1];
          resolve();
        }
      });
      child.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`parley exited (${code}) before listening`));
      });
    });
  }

  /** SIGTERM and wait for the exit. */
  async stop() {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  }

  /** Stops the node and starts it again on the same address and data. */
  async restart() {
    await this.stop();
    for (let i = 0; ; i++) {
      try {
        await this.spawn(this.addr);
        return;
      } catch (e) {
        if (i >= 20) throw e;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  }

  async close() {
    await this.stop();
    rmSync(this.data, { recursive: true, force: true });
  }

  /** The value of a metric (first sample whose line starts with `prefix`), 0 if absent. */
  async metric(prefix) {
    const res = await fetch(`${this.url}/metrics`);
    const text = await res.text();
    for (const line of text.split('\n')) {
      if (line.startsWith(prefix)) return Number(line.slice(line.lastIndexOf(' ') + 1));
    }
    return 0;
  }
}

/** The first `event` on `emitter` (first argument), or a rejection after `ms`. */
export function nextEvent(emitter, event, ms = WAIT, filter = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, handler);
      reject(new Error(`no ${event} within ${ms} ms`));
    }, ms);
    function handler(arg) {
      if (!filter(arg)) return;
      clearTimeout(timer);
      emitter.off(event, handler);
      resolve(arg);
    }
    emitter.on(event, handler);
  });
}

/** Polls `fn` until it returns a truthy value, or throws after `ms`. */
export async function eventually(fn, ms = WAIT, what = 'condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
