// The seed's Socket.IO client ("Sistema de Eventos", section 2, "Conexão Cliente"), verbatim
// between the markers; the tests only replace its URL with the test server's. The harness lines
// around it print what the snippet logs as JSON lines.
const print = (line) => process.stdout.write(JSON.stringify(line) + '\n');
console.log = (label, data) => print({ label, data });

// --- seed snippet ---
import { io } from 'socket.io-client';

const socket = io('http://localhost:8080', {
  transports: ['websocket'],
  auth: {
    apikey: 'sua-api-key'
  }
});

// Escutar eventos de uma instância específica
socket.on('minha-instancia', (data) => {
  console.log('Evento recebido:', data);
});

// Ou escutar eventos globais
socket.on('*', (data) => {
  console.log('Evento global:', data);
});
// --- end of seed snippet ---

socket.on('connect', () => print({ label: 'connected' }));
socket.on('connect_error', (err) => print({ label: 'connect_error', data: err.message }));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
