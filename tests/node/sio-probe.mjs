// A real Socket.IO client (npm socket.io-client) for the tests: connects to one or more
// namespaces and prints what happens as JSON lines on stdout.
//
//   node sio-probe.mjs [--last-event-id=ID] URL APIKEY NAMESPACE...   (APIKEY "-" = no key)
//
// --last-event-id=ID sends auth.lastEventId (replay of what was missed after that event).
// Lines: {"type":"connect","ns"} | {"type":"connect_error","ns","message"} |
//        {"type":"disconnect","ns","reason"} |
//        {"type":"event","ns","event","raw","at"}   raw = JSON.stringify(first argument),
//                                                  at = Date.now() when it arrived.
// Never reconnects on its own after a refusal (a refused connection stays refused).
import { io } from 'socket.io-client';

const flags = process.argv.slice(2).filter((a) => a.startsWith('--'));
const [url, apikey, ...namespaces] = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const lastEventId = flags.find((f) => f.startsWith('--last-event-id='))?.split('=')[1];
if (!url || !apikey || namespaces.length === 0) {
  process.stderr.write('usage: node sio-probe.mjs URL APIKEY NAMESPACE...\n');
  process.exit(2);
}
const print = (line) => process.stdout.write(JSON.stringify(line) + '\n');

for (const ns of namespaces) {
  const options = { transports: ['websocket'], reconnection: false, forceNew: true };
  options.auth = {};
  if (apikey !== '-') options.auth.apikey = apikey;
  if (lastEventId !== undefined) options.auth.lastEventId = lastEventId;
  const socket = io(url.replace(/\/$/, '') + (ns === '/' ? '/' : ns), options);
  socket.on('connect', () => print({ type: 'connect', ns }));
  socket.on('connect_error', (err) => print({ type: 'connect_error', ns, message: err.message }));
  socket.on('disconnect', (reason) => print({ type: 'disconnect', ns, reason }));
  socket.onAny((event, data) => print({ type: 'event', ns, event, raw: JSON.stringify(data), at: Date.now() }));
}

// Ends when stdin closes (the test dropped the process) or on SIGTERM.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
process.on('SIGTERM', () => process.exit(0));
