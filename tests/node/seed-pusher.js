// The seed's Pusher client ("Sistema de Eventos", section 7, "Cliente JavaScript"), verbatim
// between the markers except one addition the tests make to its options: the address of the
// local Pusher-protocol server (wsHost, wsPort, no TLS) instead of Pusher's cloud cluster. The
// harness lines around it print what the snippet logs as JSON lines.
const print = (line) => process.stdout.write(JSON.stringify(line) + '\n');
console.log = (label, data) => print({ label, data });

// --- seed snippet ---
const Pusher = require('pusher-js');

const pusher = new Pusher('your-key', {
  cluster: 'us2',
  encrypted: true
});

const channel = pusher.subscribe('evolution.minha-instancia');

channel.bind('MESSAGES_UPSERT', (data) => {
  console.log('Nova mensagem:', data);
});
// --- end of seed snippet ---

channel.bind('pusher:subscription_succeeded', () => print({ label: 'subscribed' }));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
