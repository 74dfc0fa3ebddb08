// Interop client with Node `ws` (see README.md).
const WebSocket = require('ws');

const url = `ws+unix://${process.argv[2]}:/interop?x=1`;
const big = Buffer.alloc(1 << 20, 0).map((_, i) => i % 251);
const messages = [
  { data: 'hello ✓', binary: false },
  { data: Buffer.from([...Array(256).keys()]), binary: true },
  { data: '', binary: false },
  { data: big, binary: true },
];

function fail(why) {
  console.log(why);
  process.exit(1);
}

function exchange() {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { maxPayload: 64 << 20 });
    let i = 0;
    ws.on('open', () => ws.send(messages[0].data, { binary: messages[0].binary }));
    ws.on('message', (data, isBinary) => {
      const want = messages[i];
      const same = isBinary === want.binary && Buffer.compare(Buffer.from(data), Buffer.from(want.data)) === 0;
      if (!same) fail(`echo mismatch on message ${i}`);
      i += 1;
      if (i < messages.length) ws.send(messages[i].data, { binary: messages[i].binary });
      else ws.close(4000, 'client-bye');
    });
    ws.on('close', () => resolve());
    ws.on('error', (e) => fail(`error: ${e.message}`));
  });
}

function serverClose() {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.on('open', () => ws.send('close:server-bye'));
    ws.on('close', (code, reason) => {
      if (code !== 4000 || reason.toString() !== 'server-bye') fail(`server close arrived as ${code} ${reason}`);
      resolve();
    });
    ws.on('error', (e) => fail(`error: ${e.message}`));
  });
}

exchange().then(serverClose).then(() => console.log('ok'));
