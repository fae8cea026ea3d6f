// The comparison baseline: the seed's Socket.IO ChatServer (socket.io 4.8, ioredis,
// @socket.io/redis-adapter), reproduced handler for handler so `parley-loadtest
// --protocol socketio` can measure it beside Parley. Differences from the seed are listed
// in README.md; each one makes the baseline cheaper, never dearer.
//
// Environment:
//   PORT=3100                 listen port (127.0.0.1 only)
//   PARLEY_JWT_SECRET         HS256 secret, the same as Parley's (default: its dev secret)
//   REDIS_PORT=6390           use Redis on 127.0.0.1:REDIS_PORT for history and room users
//                             (unset: an in-process stand-in with the same commands)
//   ADAPTER=1                 @socket.io/redis-adapter over that Redis (several processes)
//   PUSH_LOOKUP=1             the seed's per-message sendPushNotifications lookup (default 1)
//   LOG_CONNECTIONS=1         the seed's console.log per connect/disconnect (default off)

import { createServer } from 'node:http';
import { randomUUID } from 'node:crypto';
import { Server } from 'socket.io';
import { Redis } from 'ioredis';
import { createAdapter } from '@socket.io/redis-adapter';
import { verifyToken } from './jwt.js';
import { MemoryStore } from './memory-store.js';

const env = process.env;
const PORT = Number(env.PORT || 3100);
const SECRET = env.PARLEY_JWT_SECRET || 'parley-dev-secret-not-for-production';
const PUSH_LOOKUP = (env.PUSH_LOOKUP ?? '1') !== '0';
const LOG = env.LOG_CONNECTIONS === '1';

const httpServer = createServer((req, res) => {
  const ok = req.url === '/healthz';
  res.writeHead(ok ? 200 : 404, { 'content-type': 'text/plain' });
  res.end(ok ? 'ok\n' : 'not found\n');
});

// The seed's server options.
const io = new Server(httpServer, {
  cors: { origin: env.ALLOWED_ORIGINS?.split(',') || '*', credentials: true },
  pingTimeout: 60000,
  pingInterval: 25000,
  upgradeTimeout: 10000,
  maxHttpBufferSize: 1e6,
  transports: ['websocket', 'polling'],
  allowUpgrades: true,
});

let redis;
if (env.REDIS_PORT) {
  redis = new Redis({ host: '127.0.0.1', port: Number(env.REDIS_PORT), password: env.REDIS_PASSWORD });
  redis.on('error', (e) => console.error(`redis: ${e.message}`));
  if (env.ADAPTER === '1') {
    const pubClient = redis.duplicate();
    const subClient = pubClient.duplicate();
    for (const c of [pubClient, subClient]) c.on('error', (e) => console.error(`redis: ${e.message}`));
    io.adapter(createAdapter(pubClient, subClient));
  }
} else {
  if (env.ADAPTER === '1') throw new Error('ADAPTER=1 needs REDIS_PORT');
  redis = new MemoryStore();
}

// The seed's authentication middleware; Parley's claims: sub (user id), name, exp.
io.use(async (socket, next) => {
  const token = socket.handshake.auth.token;
  try {
    const user = await verifyToken(token, SECRET);
    socket.userId = user.id;
    socket.username = user.username;
    socket.data.userId = user.id; // fetchSockets() of remote sockets only carries .data
    next();
  } catch (error) {
    next(new Error('Authentication failed'));
  }
});

io.on('connection', (socket) => {
  if (LOG) console.log(`User connected: ${socket.userId}`);
  socket.join(`user:${socket.userId}`);
  socket.on('disconnect', (reason) => {
    if (LOG) console.log(`User disconnected: ${socket.userId}, reason: ${reason}`);
  });
});

// The seed's push service is external; this stub only counts.
const pushService = { sent: 0, async send() { this.sent += 1; } };

// The seed's ChatServer. Additions: an optional ack callback on each request (the
// seed's client calls socket.timeout(5000).emit(event, data, cb)), and a try/catch so a
// bad request cannot crash the process.
class ChatServer {
  constructor(io, redis) {
    this.io = io;
    this.redis = redis;
    this.setupHandlers();
  }

  setupHandlers() {
    this.io.on('connection', (socket) => {
      const guard = (handler) => async (payload, callback) => {
        const ack = typeof callback === 'function' ? callback : () => {};
        try {
          await handler(payload || {}, ack);
        } catch (e) {
          ack({ error: { code: 'internal', message: String(e?.message || e) } });
        }
      };

      socket.on('joinRoom', guard(async ({ roomId }, ack) => {
        socket.join(roomId);
        const messages = await this.getMessageHistory(roomId);
        socket.emit('messageHistory', messages);
        socket.to(roomId).emit('userJoined', { userId: socket.userId, username: socket.username });
        await this.redis.sadd(`room:${roomId}:users`, socket.userId);
        ack({ roomId, messages });
      }));

      socket.on('sendMessage', guard(async ({ roomId, text, attachments }, ack) => {
        const message = {
          id: randomUUID(),
          roomId,
          userId: socket.userId,
          username: socket.username,
          text,
          attachments,
          timestamp: Date.now(),
          readBy: [socket.userId],
        };
        // The seed's `await this.saveMessage(message)` writes to a database; the Redis
        // zset below is this baseline's only store.
        await this.redis.zadd(`room:${roomId}:messages`, message.timestamp, JSON.stringify(message));
        this.io.to(roomId).emit('newMessage', message);
        ack(message);
        if (PUSH_LOOKUP) await this.sendPushNotifications(roomId, message);
      }));

      socket.on('typing', ({ roomId, isTyping } = {}) => {
        socket.to(roomId).emit('userTyping', { userId: socket.userId, username: socket.username, isTyping });
      });

      socket.on('markRead', guard(async ({ roomId, messageIds }, ack) => {
        // The seed updates readBy in its database; there is none here.
        socket.to(roomId).emit('messagesRead', { userId: socket.userId, messageIds });
        ack({ roomId });
      }));

      socket.on('leaveRoom', guard(async ({ roomId }, ack) => {
        socket.leave(roomId);
        await this.redis.srem(`room:${roomId}:users`, socket.userId);
        socket.to(roomId).emit('userLeft', { userId: socket.userId, username: socket.username });
        ack({ roomId });
      }));

      // As in the seed: by 'disconnect' socket.rooms is already empty in socket.io 4,
      // so this loop does nothing (the seed's bug, kept).
      socket.on('disconnect', async () => {
        for (const roomId of Array.from(socket.rooms)) {
          if (roomId !== socket.id) {
            await this.redis.srem(`room:${roomId}:users`, socket.userId);
            socket.to(roomId).emit('userLeft', { userId: socket.userId, username: socket.username });
          }
        }
      });
    });
  }

  async getMessageHistory(roomId, limit = 50) {
    const messages = await this.redis.zrevrange(`room:${roomId}:messages`, 0, limit - 1);
    return messages.map((msg) => JSON.parse(msg)).reverse();
  }

  async sendPushNotifications(roomId, message) {
    const roomUsers = await this.redis.smembers(`room:${roomId}:users`);
    const onlineUsers = await this.getOnlineUsers(roomId);
    const offlineUsers = roomUsers.filter((u) => !onlineUsers.includes(u));
    for (const userId of offlineUsers) {
      await pushService.send(userId, {
        title: `${message.username} sent a message`,
        body: message.text,
        data: { roomId, messageId: message.id },
      });
    }
  }

  async getOnlineUsers(roomId) {
    const sockets = await this.io.in(roomId).fetchSockets();
    return sockets.map((s) => s.data.userId);
  }
}

new ChatServer(io, redis);

httpServer.listen(PORT, '127.0.0.1', () => {
  const store = env.REDIS_PORT ? `redis:${env.REDIS_PORT}` : 'memory';
  console.log(`baseline pid ${process.pid} on 127.0.0.1:${PORT} store=${store} ` +
    `adapter=${env.ADAPTER === '1' ? 'redis' : 'memory'} push_lookup=${PUSH_LOOKUP ? 1 : 0}`);
});

const stop = () => {
  io.close();
  redis.quit?.().catch(() => {});
  setTimeout(() => process.exit(0), 500).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
