// End-to-end: the browser client and the page lifecycle.
//
// * A page taken offline while its server goes away waits out a long reconnect delay
//   (`minReconnectDelay` 60 s, no jitter), unless the browser says the network is back: on the
//   window's `online` event, and when a page becomes visible, it reconnects at once and receives
//   every message published meanwhile, once each, in order.
// * A socket that goes silent without closing (the server process stopped with SIGSTOP: the
//   TCP connection stays open, nothing arrives, the browser fires no `close`) is noticed by the
//   idle `ping` probe within `pingInterval + requestTimeout`; the client then reconnects and
//   resumes once the server runs again.
// * A page whose `localStorage` throws on every access (Safari's private mode, storage blocked
//   for the origin) still connects, subscribes, publishes and receives, with its cache in memory;
//   so does one whose `setItem` always throws.
//
// Real headless Chromium (playwright-core), a real `redistribute` server and redis-server on
// free ports. Every wait is bounded, and well below the 60 s reconnect delay that the client
// would wait without the lifecycle events.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  api, startStack, waitFor,
} from './fixtures.mjs';

const PAGE = `<!doctype html><meta charset="utf-8"><title>lifecycle</title>
<script type="module">
const q = new URLSearchParams(location.search);
if (q.get('storage') === 'getter') {
  Object.defineProperty(window, 'localStorage', {
    configurable: true,
    get() { throw new DOMException('denied', 'SecurityError'); },
  });
}
if (q.get('storage') === 'setitem') {
  Storage.prototype.setItem = function () { throw new DOMException('full', 'QuotaExceededError'); };
}
const { default: init, Client } = await import('/pkg/redistribute_client.js');
await init();
window.got = [];
window.errors = [];
window.connects = 0;
window.disconnects = 0;
const client = new Client({
  pingInterval: Number(q.get('ping') ?? 25000),
  requestTimeout: Number(q.get('rt') ?? 10000),
  targets: q.get('targets'),
  shareSocket: false,
  minReconnectDelay: 60000,
  maxReconnectDelay: 60000,
  reconnectJitter: 0,
});
client.on('connect', () => { window.connects += 1; });
client.on('disconnect', () => { window.disconnects += 1; });
client.on('messages', (channel, messages) => { for (const m of messages) window.got.push(m.offset); });
client.on('error', (e) => window.errors.push(String(e && (e.code || e.message || e))));
window.client = client;
await client.subscribe('life', '0');
window.ready = true;
</script>`;

const publish = async (port, n) =>
  (await api(port, 'POST', '/api/publish', { channel: 'life', fields: { n } })).offset;

let stack, server, web, browser;

async function open(storage, extra = '') {
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error('page error:', e));
  const q = `targets=${encodeURIComponent(server.wsUrl)}&storage=${storage}${extra}`;
  await page.goto(`http://127.0.0.1:${web.address().port}/?${q}`);
  await page.waitForFunction(() => window.ready === true, null, { timeout: 20000 });
  return page;
}

/** Waits until the page got exactly `expected` (once each, in order) and nothing more. */
async function receivesExactly(page, expected, what) {
  await waitFor(what, async () => (await page.evaluate(() => window.got.length)) >= expected.length, 20000);
  await sleep(300); // a duplicate would arrive now
  assert.deepEqual(await page.evaluate(() => window.got), expected, what);
}

/** Kills the server (while the page is offline, if `offline`), publishes `ns` once it is back. */
async function outage(page, ns, offline) {
  const connects = await page.evaluate(() => window.connects);
  if (offline) await page.context().setOffline(true);
  await server.kill();
  await waitFor('the page noticed the disconnect', () => page.evaluate(() => !window.client.connected));
  server.start();
  await server.ready();
  const published = [];
  for (const n of ns) published.push(await publish(server.port, n));
  await sleep(1000);
  assert.equal(await page.evaluate(() => window.client.connected), false, 'still waiting out 60 s');
  return { connects, published };
}

describe('the browser client and the page lifecycle', { timeout: 180000 }, () => {
  before(async () => {
    stack = await startStack(PAGE);
    ({ server, web, browser } = stack);
  });

  after(() => stack?.stop());

  it('reconnects at once when the network is back or the page becomes visible', async () => {
    const page = await open('default');
    const expected = [await publish(server.port, 1)];
    await receivesExactly(page, expected, 'the first message');

    // Offline and back: `online` fires, the client skips the rest of its 60 s delay.
    let { connects, published } = await outage(page, [2, 3, 4], true);
    const back = Date.now();
    await page.context().setOffline(false);
    await page.evaluate(() => window.dispatchEvent(new Event('online')));
    await waitFor('reconnected after online', () => page.evaluate((n) => window.connects > n, connects), 20000);
    console.log(`reconnected ${Date.now() - back} ms after online`);
    expected.push(...published);
    await receivesExactly(page, expected, 'everything published while offline');

    // Hidden, then visible again: the same.
    ({ connects, published } = await outage(page, [5, 6], false));
    await page.evaluate(() => {
      Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
      document.dispatchEvent(new Event('visibilitychange'));
    });
    await sleep(1000);
    assert.equal(await page.evaluate(() => window.client.connected), false, 'a hidden page waits');
    await page.evaluate(() => {
      Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'visible' });
      document.dispatchEvent(new Event('visibilitychange'));
    });
    await waitFor('reconnected when visible', () => page.evaluate((n) => window.connects > n, connects), 20000);
    expected.push(...published);
    await receivesExactly(page, expected, 'everything published while hidden');

    // Connected: more lifecycle events open no second connection.
    connects = await page.evaluate(() => window.connects);
    await page.evaluate(() => {
      for (let i = 0; i < 5; i++) {
        window.dispatchEvent(new Event('online'));
        document.dispatchEvent(new Event('visibilitychange'));
      }
    });
    expected.push(await publish(server.port, 7));
    await receivesExactly(page, expected, 'the next message, once');
    assert.equal(await page.evaluate(() => window.connects), connects, 'no extra connection');
    await page.close();
  });

  it('notices a socket that went silent by its ping probe, and resumes', async () => {
    const page = await open('default', '&ping=1000&rt=2000');
    const expected = (await api(server.port, 'GET', '/api/history?channel=life&from=0&limit=1000'))
      .messages.map((m) => m.offset);
    await receivesExactly(page, expected, 'the history');
    const stopped = Date.now();
    process.kill(server.proc.pid, 'SIGSTOP');
    try {
      // Without the probe nothing would happen: the socket stays open and silent.
      await waitFor('the silent socket noticed', () => page.evaluate(() => window.disconnects > 0), 20000);
      console.log(`dead socket noticed after ${Date.now() - stopped} ms (bound 3000 ms + timers)`);
    } finally {
      process.kill(server.proc.pid, 'SIGCONT');
    }
    const published = [await publish(server.port, 50), await publish(server.port, 51)];
    const connects = await page.evaluate(() => window.connects);
    await page.evaluate(() => window.dispatchEvent(new Event('online')));
    await waitFor('reconnected', () => page.evaluate((n) => window.connects > n, connects), 20000);
    await receivesExactly(page, [...expected, ...published], 'everything published meanwhile, once');
    await page.close();
  });

  for (const storage of ['getter', 'setitem']) {
    it(`works with a localStorage that throws (${storage})`, async () => {
      const before = (await api(server.port, 'GET', '/api/history?channel=life&from=0&limit=1000')).messages
        .map((m) => m.offset);
      const page = await open(storage);
      await receivesExactly(page, before, 'the history');
      const mine = await page.evaluate(() => window.client.publish('life', { from: 'page' }));
      const theirs = await publish(server.port, 99);
      await receivesExactly(page, [...before, mine, theirs], 'its own and others\' messages');
      const errors = await page.evaluate(() => window.errors);
      if (storage === 'getter') {
        assert.ok(errors.includes('storage_unavailable'), `errors: ${errors}`);
        const cached = await page.evaluate(async () => (await window.client.load('life')).messages.map((m) => m.offset));
        assert.deepEqual(cached.slice(-2), [mine, theirs], 'the cache works, in memory');
      }
      await page.close();
    });
  }
});
