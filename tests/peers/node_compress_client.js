// Node `ws` as a client with perMessageDeflate on: sends compressible text
// to an echo server on the Unix socket argv[2], checks the echoes, prints
// the negotiated extensions and 'ok' (tests/compression.rs).
const WebSocket = require("ws");
const path = process.argv[2];
const doc = JSON.stringify(Array.from({ length: 60 }, (_, i) => ({ id: i, name: `user ${i}`, tags: ["a", "b", "c"] })));
const messages = [doc, doc + doc, "short"];
const ws = new WebSocket(`ws+unix://${path}:/compressed`, { perMessageDeflate: true });
let i = 0;
ws.on("open", () => {
  console.log("extensions", ws.extensions);
  ws.send(messages[0]);
});
ws.on("message", (data) => {
  if (data.toString() !== messages[i]) {
    console.log(`echo mismatch at ${i}`);
    process.exit(1);
  }
  i += 1;
  if (i === messages.length) {
    ws.close(1000);
  } else {
    ws.send(messages[i]);
  }
});
ws.on("close", (code) => {
  if (i === messages.length && code === 1000) {
    console.log("ok");
    process.exit(0);
  }
  console.log(`closed early with ${code}`);
  process.exit(1);
});
ws.on("error", (e) => {
  console.log(`error ${e.message}`);
  process.exit(1);
});
