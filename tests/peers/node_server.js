// Echo server on a Unix socket with Node `ws` (see README.md).
const http = require('http');
const { WebSocketServer } = require('ws');

const path = process.argv[2];
const server = http.createServer();
// WS_DEFLATE=1: accept permessage-deflate offers (tests/compression.rs).
const perMessageDeflate = process.env.WS_DEFLATE === '1' ? { threshold: 0 } : false;
const wss = new WebSocketServer({ server, maxPayload: 64 << 20, perMessageDeflate });
wss.on('connection', (ws, req) => {
  console.log(`path ${req.url}`);
  ws.on('message', (data, isBinary) => {
    if (!isBinary && data.toString().startsWith('close:')) {
      ws.close(4000, data.toString().slice('close:'.length));
    } else {
      ws.send(data, { binary: isBinary });
    }
  });
  ws.on('close', (code, reason) => console.log(`closed ${code} ${reason.toString()}`));
});
process.on('SIGTERM', () => process.exit(0));
server.listen(path, () => console.log('ready'));
