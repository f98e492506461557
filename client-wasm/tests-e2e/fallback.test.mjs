// End-to-end: the SSE fallback behind a proxy that refuses WebSocket upgrades.
//
// A small HTTP proxy in front of the server answers every `Upgrade: websocket` request with
// `403` and forwards everything else (streaming the responses). The browser client, given the
// proxy's `ws://…/ws` as its target, fails to open the WebSocket twice, switches to the SSE
// fallback (`GET /sse` + `POST /publish`) and says so (`transport` event and property); then:
//
// * it receives every message exactly once, in order, while the proxy kills the event stream
//   mid-flow (several times) and while the server restarts;
// * it publishes through `POST /publish` (no WebSocket ever opens), and a publish whose answer
//   the proxy drops is posted again under its idempotency key and stored once;
// * a reload resumes from its localStorage cache: the cached messages are there, and only newer
//   messages arrive;
// * two tabs sharing one connection: the leader tab owns the fallback; the follower receives
//   and publishes through it and learns its transport;
// * with `transports: ['websocket']` it never falls back;
// * with authentication on, the token goes with every request: allowed channels flow and
//   publish, a forbidden subscribe (alone or with an allowed one) and a forbidden publish are
//   refused with `forbidden`, and the allowed channel keeps flowing.
//
// Real headless Chromium (playwright-core), a real `redistribute` server and redis-server on
// free ports. Every wait is bounded.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { createServer, request } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { api, startStack, waitFor } from './fixtures.mjs';

const PAGE = `<!doctype html><meta charset="utf-8"><title>fallback</title>
<script type="module">
const q = new URLSearchParams(location.search);
const { default: init, Client } = await import('/pkg/redistribute_client.js');
await init();
window.got = [];
window.errors = [];
window.transports = [];
const options = {
  targets: q.get('targets'),
  shareSocket: q.get('share') === '1',
  minReconnectDelay: 50,
  maxReconnectDelay: 500,
  requestTimeout: 8000,
};
if (q.get('token')) options.token = q.get('token');
if (q.get('transports')) options.transports = q.get('transports').split(',');
const client = new Client(options);
client.on('transport', (t) => window.transports.push(t));
client.on('messages', (channel, messages) => { for (const m of messages) window.got.push(m.fields.n); });
client.on('error', (e) => window.errors.push(String(e && (e.code || e.message || e))));
window.client = client;
const loaded = await client.load('fb');
window.cached = loaded.messages.map((m) => m.fields.n);
if (q.get('subscribe') !== '0') await client.subscribe('fb', loaded.lastOffset ?? '0');
window.ready = true;
</script>`;

/** A proxy to `port` that refuses WebSocket upgrades; `killStreams()` cuts the open `/sse`. */
function blockingProxy(port) {
  const streams = new Set();
  const stats = { upgrades: 0, sse: 0, publish: 0 };
  // Publishes to forward and then answer by dropping the connection (stored, but the client
  // never hears it).
  let dropPublishes = 0;
  const server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    if (path === '/sse') stats.sse += 1;
    if (path === '/publish' && req.method === 'POST') stats.publish += 1;
    const upstream = request(
      { host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers },
      (up) => {
        if (path === '/publish' && dropPublishes > 0) {
          dropPublishes -= 1;
          up.resume();
          up.once('end', () => res.destroy());
          return;
        }
        res.writeHead(up.statusCode, up.headers);
        if (path === '/sse') {
          streams.add(res);
          res.once('close', () => streams.delete(res));
          up.once('error', () => res.destroy());
        }
        up.pipe(res);
      },
    );
    upstream.on('error', () => res.destroy());
    res.once('close', () => upstream.destroy());
    req.pipe(upstream);
  });
  server.on('upgrade', (req, socket) => {
    stats.upgrades += 1;
    socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
  });
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => {
    server.stats = stats;
    server.killStreams = () => {
      const n = streams.size;
      for (const res of streams) res.destroy();
      return n;
    };
    server.wsUrl = `ws://127.0.0.1:${server.address().port}/ws`;
    server.dropNextPublish = () => { dropPublishes += 1; };
    ok(server);
  }));
}

let stack, proxy;
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const publish = (n) => api(stack.server.port, 'POST', '/api/publish', { channel: 'fb', fields: { n } });

async function open(extra = '') {
  const page = await stack.browser.newPage();
  page.on('pageerror', (e) => console.error('page error:', e));
  const q = `targets=${encodeURIComponent(proxy.wsUrl)}${extra}`;
  await page.goto(`http://127.0.0.1:${stack.web.address().port}/?${q}`);
  await page.waitForFunction(() => window.ready === true, null, { timeout: 30000 });
  return page;
}

/** Waits until the page got exactly `expected` (once each, in order) and nothing more. */
async function receivesExactly(page, expected, what) {
  await waitFor(what, async () => (await page.evaluate(() => window.got.length)) >= expected.length, 30000);
  await sleep(300); // a duplicate would arrive now
  assert.deepEqual(await page.evaluate(() => window.got), expected, what);
}

describe('SSE fallback behind a proxy that refuses WebSocket upgrades', { timeout: 240000 }, () => {
  before(async () => {
    // The page is served from another origin: the fallback's fetches need CORS.
    stack = await startStack(PAGE, ['--allowed-origin', '*']);
    proxy = await blockingProxy(stack.server.port);
  });
  after(async () => {
    proxy?.close();
    proxy?.closeAllConnections();
    await stack?.stop();
  });

  it('falls back, receives exactly once across stream cuts and a restart, publishes, resumes from the cache', async () => {
    const page = await open();
    assert.deepEqual(await page.evaluate(() => window.transports), ['sse']);
    assert.equal(await page.evaluate(() => window.client.transport), 'sse');
    assert.ok(proxy.stats.upgrades >= 2, `upgrades refused: ${proxy.stats.upgrades}`);

    for (const n of range(1, 10)) await publish(n);
    await receivesExactly(page, range(1, 10), 'the first ten');

    // The proxy cuts the stream while messages flow.
    let cuts = 0;
    for (let round = 0; round < 4; round += 1) {
      const from = 11 + round * 5;
      for (const n of range(from, from + 4)) {
        await publish(n);
        if (n % 5 === 2) cuts += proxy.killStreams();
      }
      await waitFor('the stream to reopen', () => proxy.stats.sse > cuts, 20000);
    }
    assert.ok(cuts >= 3, `streams cut: ${cuts}`);
    await receivesExactly(page, range(1, 30), 'everything across the cuts');

    // A server restart (same port, same Redis), with messages published while it is down
    // written after it is back.
    await stack.server.restart();
    for (const n of range(31, 40)) await publish(n);
    await receivesExactly(page, range(1, 40), 'everything across the restart');

    // Publishing through the fallback.
    const before = proxy.stats.publish;
    const offset = await page.evaluate(() => window.client.publish('fb', { n: 41 }));
    assert.match(offset, /^\d+-\d+$/);
    assert.ok(proxy.stats.publish > before, 'the publish went through POST /publish');
    await receivesExactly(page, range(1, 41), 'its own publish');

    // A publish whose answer is lost (stored, then the connection dropped): the client
    // reconnects and posts it again under its idempotency key; it is stored once.
    proxy.dropNextPublish();
    const posts = proxy.stats.publish;
    const again = await page.evaluate(() => window.client.publish('fb', { n: 42 }));
    assert.match(again, /^\d+-\d+$/);
    assert.ok(proxy.stats.publish >= posts + 2, `posted ${proxy.stats.publish - posts} times`);
    await receivesExactly(page, range(1, 42), 'a re-posted publish, once');
    // Only what a restart may cause (a failed connect, a subscribe answered `unavailable` and
    // retried); nothing lost, nothing refused.
    const transient = ['connect_failed', 'unavailable'];
    assert.deepEqual(await page.evaluate((t) => window.errors.filter((e) => !t.includes(e)), transient), []);

    // A reload resumes from the cache: the cached messages, then only newer ones.
    await page.reload();
    await page.waitForFunction(() => window.ready === true, null, { timeout: 30000 });
    assert.deepEqual(await page.evaluate(() => window.cached), range(1, 42));
    await publish(43);
    await receivesExactly(page, [43], 'only the new message after the reload');
    assert.equal(await page.evaluate(() => window.client.transport), 'sse');
    await page.close();
  });

  it('shares the fallback between tabs: the leader owns it', async () => {
    const a = await open('&share=1');
    const b = await open('&share=1');
    for (const page of [a, b]) {
      await waitFor('the tab to learn the transport', () => page.evaluate(() => window.client.transport === 'sse'), 30000);
    }
    const start = (await api(stack.server.port, 'GET', '/api/history?channel=fb&from=0&limit=1000')).messages.length;
    const n = start + 1;
    await publish(n);
    const fromB = await b.evaluate((n) => window.client.publish('fb', { n }), n + 1);
    assert.match(fromB, /^\d+-\d+$/);
    for (const page of [a, b]) {
      await waitFor('both messages', async () => {
        const got = await page.evaluate(() => window.got);
        return got.includes(n) && got.includes(n + 1);
      }, 30000);
      const got = await page.evaluate(() => window.got);
      assert.deepEqual(got.slice(got.indexOf(n)), [n, n + 1], 'once each, in order');
    }
    await a.close();
    await b.close();
  });

  it("never falls back with transports: ['websocket']", async () => {
    const page = await open('&transports=websocket&subscribe=0');
    const refused = proxy.stats.upgrades;
    await waitFor('several refused upgrades', () => proxy.stats.upgrades >= refused + 3, 30000);
    assert.equal(await page.evaluate(() => window.client.transport), 'websocket');
    assert.deepEqual(await page.evaluate(() => window.transports), []);
    assert.equal(await page.evaluate(() => window.client.connected), false);
    await page.close();
  });
});

const SECRET = 'fallback-e2e-secret-of-at-least-32-bytes';

/** An HS256 JWT that may read one-segment channels and publish to `fb`. */
function mint() {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = part({ alg: 'HS256', typ: 'JWT' });
  const exp = Math.floor(Date.now() / 1000) + 600;
  const body = part({ sub: 'u', exp, subscribe: ['*'], publish: ['fb'] });
  const signature = createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${signature}`;
}

describe('SSE fallback with authentication on', { timeout: 240000 }, () => {
  before(async () => {
    stack = await startStack(PAGE, [
      '--allowed-origin', '*', '--jwt-secret', SECRET, '--allow-open-api',
    ]);
    proxy = await blockingProxy(stack.server.port);
  });
  after(async () => {
    proxy?.close();
    proxy?.closeAllConnections();
    await stack?.stop();
  });

  it('sends the token, refuses what it does not allow, keeps the rest flowing', async () => {
    const page = await open(`&token=${mint()}`);
    assert.equal(await page.evaluate(() => window.client.transport), 'sse');
    await publish(1);
    await receivesExactly(page, [1], 'an allowed channel');
    // An allowed and a forbidden channel subscribed together: the server refuses the
    // stream; the client tells them apart.
    const outcomes = await page.evaluate(() => Promise.allSettled([
      window.client.subscribe('other', '0'),
      window.client.subscribe('private:x', '0'),
    ]).then((r) => r.map((o) => (o.status === 'fulfilled' ? o.value.channel : o.reason.code))));
    assert.deepEqual(outcomes, ['other', 'forbidden']);
    const refused = await page.evaluate(() => window.client.publish('other', { n: 0 })
      .then(() => 'stored', (e) => e.code));
    assert.equal(refused, 'forbidden');
    const offset = await page.evaluate(() => window.client.publish('fb', { n: 2 }));
    assert.match(offset, /^\d+-\d+$/);
    await publish(3);
    await receivesExactly(page, [1, 2, 3], 'the allowed channel keeps flowing');
    await page.close();
  });
});
