// Fake cloudflared for the tunnel tests. Understands the arguments the provider passes
// (tunnel --no-autoupdate --url U --metrics H:P) plus test-only ones:
//   --fake-log FILE   append what happened (argv, origin answer, signals) to FILE
//   --fake-hostname H the hostname /quicktunnel reports (default fake-quick-tunnel.trycloudflare.com)
//   --fake-mode MODE  normal | stubborn (ignores SIGINT) | crash (exits at once) | exit-later |
//                     proxy (the quick tunnel's URL is a loopback port whose requests are
//                     forwarded to the origin, as cloudflared forwards the edge's requests) |
//                     never-ready (/ready answers 503 forever) | noisy-crash (stderr that is
//                     not UTF-8 and a 1 MiB line, then exits)
//   --fake-edge-lost-after MS  /ready answers 503 from MS ms after it first answered 200 (the
//                     edge connections lost; cloudflared keeps running)
//   --fake-ignore-sigint  ignore SIGINT, as stubborn mode does, in any mode
//   --fake-edge-delay MS  proxy mode: the public side answers 530 (Cloudflare's "origin
//                     unreachable") until MS ms after cloudflared is ready, as a new quick
//                     tunnel's hostname does for a while
const http = require('http');
const fs = require('fs');

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const log = (line) => {
  const file = opt('--fake-log');
  if (file) fs.appendFileSync(file, line + '\n');
};
const mode = opt('--fake-mode') || 'normal';
log('argv ' + args.join(' '));
// As cloudflared does at start: every variable whose entry holds `TUNNEL_`, values and all.
const tunnelEnv = Object.keys(process.env)
  .filter((name) => (name + '=' + process.env[name]).includes('TUNNEL_'))
  .sort();
if (tunnelEnv.length > 0) {
  console.error('INF Environmental variables map[' +
    tunnelEnv.map((name) => name + ':' + process.env[name]).join(' ') + ']');
}
log('env ' + Object.keys(process.env)
  .filter((name) => name.startsWith('TUNNEL_') || name.startsWith('NGROK_'))
  .sort()
  .join(' '));

if (mode === 'crash') {
  console.error('ERR failed to request quick Tunnel: no network');
  process.exit(3);
}
if (mode === 'noisy-crash') {
  // Bytes that are not UTF-8, a 1 MiB line, then the line that says what went wrong.
  process.stderr.write(Buffer.from([0x66, 0xff, 0xfe, 0x0a]));
  process.stderr.write('x'.repeat(1 << 20) + '\n');
  process.stderr.write('ERR last words\n', () => process.exit(4));
  return;
}

if (mode === 'never-ready') {
  // What cloudflared says when it cannot reach Cloudflare's edge (and then keeps retrying).
  console.error('ERR Failed to dial a quic connection error="timeout: no recent network activity"');
}

const origin = opt('--url');
const [host, port] = opt('--metrics').split(':');
let readyPolls = 0;
// When /ready first answered 200.
let readySince;
let hostname = opt('--fake-hostname') || 'fake-quick-tunnel.trycloudflare.com';

// The public side: every request is forwarded to the origin, as cloudflared does.
const startProxy = (done) => {
  const target = new URL(origin);
  const edgeDelay = Number(opt('--fake-edge-delay') || 0);
  const proxy = http.createServer((req, res) => {
    if (readySince === undefined || Date.now() - readySince < edgeDelay) {
      log('edge 530');
      res.statusCode = 530;
      res.end('error code: 1033');
      return;
    }
    const forwarded = http.request(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      },
    );
    forwarded.on('error', () => {
      res.statusCode = 502;
      res.end();
    });
    req.pipe(forwarded);
  });
  proxy.listen(0, '127.0.0.1', () => {
    hostname = 'http://127.0.0.1:' + proxy.address().port;
    log('proxy ' + hostname);
    done();
  });
};

// Check that the origin cloudflared would forward to answers.
http.get(origin + '/from-fake-cloudflared', (res) => {
  let body = '';
  res.on('data', (c) => (body += c));
  res.on('end', () => log('origin ' + res.statusCode + ' ' + body));
}).on('error', (e) => log('origin error ' + e.message));

const metrics = () => http
  .createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    if (req.url === '/quicktunnel') {
      res.end(JSON.stringify({ hostname }));
    } else if (req.url === '/ready') {
      readyPolls += 1;
      if (readyPolls < 3 || mode === 'never-ready') {
        res.statusCode = 503;
        res.end(JSON.stringify({ status: 503, readyConnections: 0 }));
      } else {
        if (readySince === undefined) readySince = Date.now();
        const lostAfter = opt('--fake-edge-lost-after');
        if (lostAfter !== undefined && Date.now() - readySince >= Number(lostAfter)) {
          log('edge lost');
          res.statusCode = 503;
          res.end(JSON.stringify({ status: 503, readyConnections: 0 }));
          return;
        }
        res.end(JSON.stringify({ status: 200, readyConnections: 4 }));
      }
    } else {
      res.statusCode = 404;
      res.end('{}');
    }
  })
  .listen(Number(port), host, () => log('metrics listening'));
if (mode === 'proxy') {
  startProxy(metrics);
} else {
  metrics();
}
log('pid ' + process.pid);

process.on('SIGINT', () => {
  log('SIGINT');
  if (mode !== 'stubborn' && !args.includes('--fake-ignore-sigint')) process.exit(0);
});
if (mode === 'exit-later') {
  setTimeout(() => {
    console.error('ERR connection to the edge lost');
    process.exit(7);
  }, 1500);
}
