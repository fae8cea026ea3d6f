// The seed's WebSocketClient class, copied AS IS from ../shared/seed/000_7dbd85d2c37ab477.txt
// (lines 74-136: the import and the class). Only the export line at the end is added.
import { io } from 'socket.io-client';
class WebSocketClient {
constructor(url, token) {
this.socket = io(url, {
auth: { token },
transports: ['websocket', 'polling'],
reconnection: true,
reconnectionDelay: 1000,
reconnectionDelayMax: 5000,
reconnectionAttempts: Infinity
});
this.setupEventHandlers();
}
setupEventHandlers() {
this.socket.on('connect', () => {
console.log('Connected to WebSocket server');
this.onConnect?.();
});
this.socket.on('disconnect', (reason) => {
console.log('Disconnected:', reason);
this.onDisconnect?.(reason);
if (reason === 'io server disconnect') {
// Server disconnected, manually reconnect
this.socket.connect();
}
});
this.socket.on('connect_error', (error) => {
console.error('Connection error:', error.message);
this.onError?.(error);
});
this.socket.on('reconnect', (attemptNumber) => {
console.log('Reconnected after', attemptNumber, 'attempts');
this.onReconnect?.(attemptNumber);
});
this.socket.on('reconnect_attempt', (attemptNumber) => {
console.log('Reconnection attempt:', attemptNumber);
});
}
// Send message
emit(event, data) {
return new Promise((resolve, reject) => {
this.socket.timeout(5000).emit(event, data, (error, response) => {
if (error) {
reject(error);
} else {
resolve(response);
}
});
});
}
// Listen for events
on(event, handler) {
this.socket.on(event, handler);
}
// Remove listener
off(event, handler) {
this.socket.off(event, handler);
}
// Disconnect
disconnect() {
this.socket.disconnect();
}
}
export { WebSocketClient };
