// Load test of the WebSocket channel (docs/benchmarks.md; run by scripts/bench-websocket):
// opens CLIENTS concurrent socket.io-client connections (websocket transport) to the server, then
// posts EVENTS events (one every INTERVAL ms) through the REST API and measures, for each event,
// the time from the POST until each client received it (clock: this process for both ends).
// Reads the server's RSS from /proc/PID/status before and after the connections.
//
//   node sio-load.mjs URL APIKEY INSTANCE SERVER_PID [CLIENTS=2000] [EVENTS=40] [INTERVAL=250]
//
// Prints one JSON object on stdout.
import { io } from 'socket.io-client';
import { readFileSync } from 'node:fs';

const [url, apikey, instance, pid, clientsArg, eventsArg, intervalArg] = process.argv.slice(2);
const CLIENTS = Number(clientsArg ?? 2000);
const EVENTS = Number(eventsArg ?? 40);
const INTERVAL = Number(intervalArg ?? 250);
const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const rssKb = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);

const latencies = []; // ms, one per (client, event)
const perEvent = new Map(); // seq -> { sent, received: count, last }
let connected = 0;
let failed = 0;

const rssBefore = rssKb();
const connectStart = now();
const sockets = [];
await new Promise((resolve) => {
  let settled = 0;
  const done = () => (++settled === CLIENTS ? resolve() : undefined);
  for (let i = 0; i < CLIENTS; i++) {
    const s = io(url, { transports: ['websocket'], auth: { apikey }, forceNew: true, reconnection: false });
    s.once('connect', () => { connected++; done(); });
    s.once('connect_error', () => { failed++; done(); });
    s.on(instance, (payload) => {
      const t = now();
      const seq = payload.data.seq;
      const e = perEvent.get(seq);
      if (!e) return;
      latencies.push(t - e.sent);
      e.received++;
      e.last = t;
    });
    sockets.push(s);
  }
});
const connectMs = now() - connectStart;
await sleep(2000); // let the server settle (buffers, allocator)
const rssAfter = rssKb();

for (let seq = 1; seq <= EVENTS; seq++) {
  const sent = now();
  perEvent.set(seq, { sent, received: 0, last: 0 });
  const res = await fetch(`${url}/events/${instance}`, {
    method: 'POST',
    headers: { apikey, 'content-type': 'application/json' },
    body: JSON.stringify({ event: 'MESSAGES_UPSERT', data: { seq, text: 'x'.repeat(200) } }),
  });
  if (res.status !== 202) throw new Error(`POST /events answered ${res.status}: ${await res.text()}`);
  await sleep(INTERVAL);
}
const deadline = now() + 10000;
while (latencies.length < connected * EVENTS && now() < deadline) await sleep(50);
const rssEnd = rssKb();
for (const s of sockets) s.disconnect();

const pct = (xs, p) => {
  if (xs.length === 0) return null;
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
};
const fanout = [...perEvent.values()].filter((e) => e.received > 0).map((e) => e.last - e.sent);
const round = (x) => (x === null ? null : Math.round(x * 10) / 10);
process.stdout.write(JSON.stringify({
  clients: CLIENTS, connected, failed, connect_seconds: round(connectMs / 1000),
  events: EVENTS, expected_receipts: connected * EVENTS, receipts: latencies.length,
  rss_kb_before: rssBefore, rss_kb_connected: rssAfter, rss_kb_end: rssEnd,
  bytes_per_connection: connected ? Math.round(((rssAfter - rssBefore) * 1024) / connected) : null,
  latency_ms: { p50: round(pct(latencies, 50)), p99: round(pct(latencies, 99)), max: round(pct(latencies, 100)) },
  last_client_ms: { p50: round(pct(fanout, 50)), p99: round(pct(fanout, 99)) },
}) + '\n');
process.exit(0);
