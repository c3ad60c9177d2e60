// A real Pusher client (npm pusher-js) for the tests: subscribes to channels named on stdin and
// prints what happens as JSON lines on stdout.
//
//   node pusher-probe.js HOST PORT KEY         then, on stdin, one channel name per line
//
// Lines: {"type":"connected"} | {"type":"subscribed","channel"} |
//        {"type":"subscription_error","channel","status"} | {"type":"error","message"} |
//        {"type":"event","channel","event","raw","at"}   raw = JSON.stringify(data), at = Date.now().
const Pusher = require('pusher-js');
const readline = require('readline');

const [host, port, key] = process.argv.slice(2);
if (!host || !port || !key) {
  process.stderr.write('usage: node pusher-probe.js HOST PORT KEY\n');
  process.exit(2);
}
const print = (line) => process.stdout.write(JSON.stringify(line) + '\n');

const pusher = new Pusher(key, {
  cluster: 'mt1',
  wsHost: host,
  wsPort: Number(port),
  forceTLS: false,
  enabledTransports: ['ws'],
  disableStats: true,
});
pusher.connection.bind('connected', () => print({ type: 'connected' }));
pusher.connection.bind('error', (err) => print({ type: 'error', message: JSON.stringify(err) }));

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const name = line.trim();
  if (!name) return;
  const channel = pusher.subscribe(name);
  channel.bind('pusher:subscription_succeeded', () => print({ type: 'subscribed', channel: name }));
  channel.bind('pusher:subscription_error', (status) =>
    print({ type: 'subscription_error', channel: name, status }));
  channel.bind_global((event, data) => {
    if (event.startsWith('pusher:') || event.startsWith('pusher_internal:')) return;
    print({ type: 'event', channel: name, event, raw: JSON.stringify(data), at: Date.now() });
  });
}).on('close', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0));
