// End-to-end: what the client keeps in localStorage stays right when several tabs and several
// clients of one origin use it at once.
//
// * Two tabs queue and cancel outbox messages at the same time, while the server is down:
//   afterwards the outbox holds exactly the messages queued and not cancelled (none lost, none
//   revived), and once the server is back each is stored exactly once.
// * Clients of other targets, or with another `namespace`, on the same origin never read each
//   other's cached messages and offsets (a resume from another server's offset would skip
//   messages).
//
// Real headless Chromium (playwright-core), real `redistribute` servers and redis-servers on
// free ports; the test page is served from memory next to client-wasm/pkg/. Every wait is
// bounded.
//
// Run: client-wasm/build.sh && cargo build -p redistribute-server && npm test (here).
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  api, launchBrowser, logDir, servePages, startRedis, startServer, waitFor,
} from './fixtures.mjs';

const PAGE = `<!doctype html><meta charset="utf-8"><title>storage</title>
<script type="module">
import init, { Client } from '/pkg/redistribute_client.js';
await init();
const q = new URLSearchParams(location.search);
const options = { targets: q.get('targets').split(','), shareSocket: q.get('share') !== '0' };
if (q.get('ns')) options.namespace = q.get('ns');
window.got = [];
window.settled = {};
const client = new Client(options);
client.on('messages', (channel, messages) => { for (const m of messages) window.got.push(m.offset); });
window.client = client;
// Queues n messages {who, n} with idempotency keys who-n; cancels those with cancel(n) true.
// Yields to the event loop every few messages so the other tab's writes interleave.
window.churn = async (channel, who, count, cancelEvery) => {
  for (let n = 0; n < count; n++) {
    const id = who + '-' + n;
    client.publish(channel, { who, n }, { idempotencyKey: id }).then(
      (offset) => { window.settled[id] = offset; },
      (e) => { window.settled[id] = e.code; },
    );
    if (cancelEvery && n % cancelEvery === 0 && !client.cancel(id)) throw new Error('cancel ' + id);
    if (n % 4 === 3) await new Promise((ok) => setTimeout(ok, 0));
  }
};
window.ready = true;
</script>`;

const publish = (port, channel, n) => api(port, 'POST', '/api/publish', { channel, fields: { n } });

async function history(port, channel) {
  const body = await api(port, 'GET', `/api/history?channel=${channel}&from=0&limit=1000`);
  return body.messages;
}

let redis1, redis2, s1, s2, web, browser;
const opened = new Set();

async function openTab({ targets, ns, share = true, name = 'tab' }) {
  const page = await browser.newPage();
  opened.add(page);
  page.on('pageerror', (e) => console.error(`[${name}] page error:`, e));
  const q = new URLSearchParams({ targets: targets.join(','), share: share ? '1' : '0' });
  if (ns) q.set('ns', ns);
  await page.goto(`http://127.0.0.1:${web.address().port}/?${q}`);
  await page.waitForFunction(() => window.ready === true, null, { timeout: 20000 });
  return page;
}

const outboxIds = (page) => page.evaluate(() => window.client.outbox().map((e) => e.id));

describe('localStorage shared by tabs and clients of one origin', { timeout: 300000 }, () => {
  before(async () => {
    [redis1, redis2] = [await startRedis(), await startRedis()];
    [s1, s2] = [await startServer(redis1.url), await startServer(redis2.url)];
    web = await servePages(PAGE);
    browser = await launchBrowser();
  });

  afterEach(async () => {
    for (const page of opened) await page.close().catch(() => {});
    opened.clear();
    // A test that failed while server 1 was down leaves it down.
    if (s1.proc.exitCode !== null || s1.proc.signalCode !== null) {
      s1.start();
      await s1.ready();
    }
  });

  after(async () => {
    await browser?.close();
    web?.close();
    for (const s of [s1, s2, redis1, redis2]) await s?.kill();
    console.log(`logs: ${logDir}`);
  });

  for (const share of [true, false]) {
    it(`two tabs queueing and cancelling at once lose and revive nothing (shareSocket ${share})`, async () => {
      const channel = `storage-race-${share}-${Date.now()}`;
      const count = 300;
      await s1.kill();
      const a = await openTab({ targets: [s1.wsUrl], share, name: 'A' });
      const b = await openTab({ targets: [s1.wsUrl], share, name: 'B' });
      // A queues 300; B queues 300 and cancels every other one as soon as it is queued.
      await Promise.all([
        a.evaluate(([c, n]) => window.churn(c, 'a', n, 0), [channel, count]),
        b.evaluate(([c, n]) => window.churn(c, 'b', n, 2), [channel, count]),
      ]);
      const expected = [];
      for (let n = 0; n < count; n++) expected.push(`a-${n}`);
      for (let n = 1; n < count; n += 2) expected.push(`b-${n}`);
      expected.sort();
      // Let each tab see the other's last writes, then both must list exactly the expected ones.
      await sleep(500);
      for (const [name, page] of [['A', a], ['B', b]]) {
        const ids = (await outboxIds(page)).sort();
        const missing = expected.filter((id) => !ids.includes(id));
        const extra = ids.filter((id) => !expected.includes(id));
        assert.deepEqual({ missing, extra, duplicates: ids.length - new Set(ids).size },
          { missing: [], extra: [], duplicates: 0 }, `tab ${name}'s outbox`);
      }
      // Each tab's own messages wait in the order it made them.
      const order = (await outboxIds(a)).filter((id) => id.startsWith('a-'));
      assert.deepEqual(order, expected.filter((id) => id.startsWith('a-'))
        .sort((x, y) => Number(x.slice(2)) - Number(y.slice(2))));

      s1.start();
      await s1.ready();
      for (const page of [a, b]) {
        await waitFor('the outbox to empty', async () => (await outboxIds(page)).length === 0, 60000);
      }
      await waitFor('every promise to settle', async () => {
        const settled = { ...await a.evaluate(() => window.settled), ...await b.evaluate(() => window.settled) };
        return Object.keys(settled).length === 2 * count;
      }, 20000);
      const settled = { ...await a.evaluate(() => window.settled), ...await b.evaluate(() => window.settled) };
      const stored = await history(s1.port, channel);
      const keys = stored.map((m) => `${m.fields.who}-${m.fields.n}`);
      assert.deepEqual([...keys].sort(), expected, 'the server stored each queued message exactly once');
      for (const m of stored) assert.equal(settled[`${m.fields.who}-${m.fields.n}`], m.offset);
      for (let n = 0; n < count; n += 2) assert.equal(settled[`b-${n}`], 'cancelled');
      const aStored = keys.filter((k) => k.startsWith('a-'));
      assert.deepEqual(aStored, [...Array(count).keys()].map((n) => `a-${n}`), "tab A's messages in order");
    });
  }

  it('clients of other targets or another namespace keep their own offsets and caches', async () => {
    const channel = `storage-ns-${Date.now()}`;
    // Server 2's messages are older than server 1's: resuming server 2 from server 1's offset
    // would skip them.
    for (let n = 0; n < 2; n++) await publish(s2.port, channel, 100 + n);
    await sleep(5);
    for (let n = 0; n < 3; n++) await publish(s1.port, channel, n);
    const h1 = (await history(s1.port, channel)).map((m) => m.offset);
    const h2 = (await history(s2.port, channel)).map((m) => m.offset);

    const one = await openTab({ targets: [s1.wsUrl], share: false, name: 'one' });
    await one.evaluate((c) => window.client.subscribe(c, '0'), channel);
    await waitFor('server 1 history', async () => (await one.evaluate(() => window.got.length)) === 3);
    // The cache is written as messages arrive.
    const cached = await one.evaluate((c) => window.client.load(c), channel);
    assert.deepEqual(cached.messages.map((m) => m.offset), h1);
    assert.equal(cached.lastOffset, h1[2]);

    // The same targets (given twice) and no name: the same cache.
    const again = await openTab({ targets: [s1.wsUrl, s1.wsUrl], share: false, name: 'again' });
    const same = await again.evaluate((c) => window.client.load(c), channel);
    assert.deepEqual(same.messages.map((m) => m.offset), h1, 'same namespace, same cache');

    // Other targets: nothing cached, and a resume from what load says gets server 2's messages.
    const two = await openTab({ targets: [s2.wsUrl], share: false, name: 'two' });
    const loaded = await two.evaluate((c) => window.client.load(c), channel);
    assert.deepEqual(loaded, { messages: [], lastOffset: undefined }, 'another server: empty cache');
    await two.evaluate(([c, from]) => window.client.subscribe(c, from ?? '0'), [channel, loaded.lastOffset]);
    await waitFor('server 2 history', async () => (await two.evaluate(() => window.got.length)) === 2);
    assert.deepEqual(await two.evaluate(() => window.got), h2);

    // The same targets with a namespace name: a cache of its own, in both directions.
    const user = await openTab({ targets: [s1.wsUrl], ns: 'user-2', share: false, name: 'user' });
    const mine = await user.evaluate((c) => window.client.load(c), channel);
    assert.deepEqual(mine, { messages: [], lastOffset: undefined }, 'another user: empty cache');
    await user.evaluate((c) => window.client.subscribe(c, '$'), channel);
    await publish(s1.port, channel, 3);
    await waitFor('the live message', async () => (await user.evaluate(() => window.got.length)) === 1);
    const userCache = await user.evaluate((c) => window.client.load(c), channel);
    assert.equal(userCache.messages.length, 1);
    // Server 2's client and user-2 wrote their caches; the first client's is its own still.
    await waitFor('client one to cache the live message', async () =>
      (await one.evaluate(() => window.got.length)) === 4);
    const h1now = (await history(s1.port, channel)).map((m) => m.offset);
    const oneNow = await one.evaluate((c) => window.client.load(c), channel);
    assert.deepEqual(oneNow.messages.map((m) => m.offset), h1now);
    const twoNow = await two.evaluate((c) => window.client.load(c), channel);
    assert.deepEqual(twoNow.messages.map((m) => m.offset), h2);
  });
});
