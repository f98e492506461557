// End-to-end: several tabs of one origin share one WebSocket (leader election with Web Locks,
// relay over BroadcastChannel), the leader can go away mid-stream, and publishes made while the
// server is down wait in the persisted outbox, across a reload, and are stored exactly once.
//
// Real headless Chromium (playwright-core), real `redistribute` server and redis-server on free
// ports. The test page is served from memory next to client-wasm/pkg/; every wait is bounded.
//
// Run: client-wasm/build.sh && cargo build -p redistribute-server && npm test (here).
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { request } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  api, startStack, waitFor,
} from './fixtures.mjs';

const PAGE = `<!doctype html><meta charset="utf-8"><title>tabs</title>
<script type="module">
import init, { Client } from '/pkg/redistribute_client.js';
await init();
const q = new URLSearchParams(location.search);
window.got = [];
window.roles = [];
window.acked = [];
const client = new Client({ targets: q.get('targets'), shareSocket: q.get('share') !== '0' });
client.on('leader', () => { window.roles.push('leader'); window.leaderAt = Date.now(); });
client.on('follower', () => window.roles.push('follower'));
client.on('outbox', (n) => { window.outboxSize = n; });
client.on('messages', (channel, messages) => {
  for (const m of messages) window.got.push(m.offset);
});
window.client = client;
window.send = (channel, n) =>
  client.publish(channel, { n }).then((offset) => { window.acked.push([n, offset]); });
if (q.get('channel')) await client.subscribe(q.get('channel'), '0');
window.ready = true;
</script>`;

const publish = (port, channel, n) => api(port, 'POST', '/api/publish', { channel, fields: { n } });

async function history(port, channel) {
  const body = await api(port, 'GET', `/api/history?channel=${channel}&from=0&limit=1000`);
  return body.messages;
}

/**
 * WebSocket connections open on the server: its `/metrics` gauge when the build has one,
 * else the server's established TCP connections (`ss`; this test's own HTTP calls close
 * theirs).
 */
async function wsConnections(port) {
  try {
    const text = await new Promise((ok, fail) => {
      const req = request({ host: '127.0.0.1', port, path: '/metrics', agent: false }, (res) => {
        let t = '';
        res.on('data', (c) => { t += c; });
        res.on('end', () => ok(res.statusCode === 200 ? t : ''));
      });
      req.on('error', fail);
      req.end();
    });
    const m = text.match(/^redistribute_connections\{[^}]*transport="ws"[^}]*\} (\d+)/m);
    if (m) return Number(m[1]);
  } catch { /* fall back to ss */ }
  const out = execFileSync('ss', ['-tnH', 'state', 'established', `( sport = :${port} )`]);
  return out.toString().split('\n').filter((l) => l.trim()).length;
}

let stack, server, web, browser;
/** Pages a test opened: closed after it, passed or failed, so none skews the next one. */
const opened = new Set();

async function openTab(channel, { share = true, noBroadcast = false, name = 'tab' } = {}) {
  const page = await browser.newPage();
  opened.add(page);
  page.on('pageerror', (e) => console.error(`[${name}] page error:`, e));
  if (noBroadcast) await page.addInitScript(() => { delete window.BroadcastChannel; });
  const q = new URLSearchParams({ targets: server.wsUrl, share: share ? '1' : '0' });
  if (channel) q.set('channel', channel);
  await page.goto(`http://127.0.0.1:${web.address().port}/?${q}`);
  await page.waitForFunction(() => window.ready === true, null, { timeout: 20000 });
  return page;
}

const got = (page) => page.evaluate(() => window.got);
const roles = (page) => page.evaluate(() => window.roles);
const role = (page) => page.evaluate(() => window.client.role);

/** Waits until the page has received exactly `offsets` (in order, none twice). */
async function receivesExactly(page, offsets, what) {
  await waitFor(`${what}: ${offsets.length} messages`, async () => (await got(page)).length >= offsets.length, 20000);
  await sleep(300); // a duplicate would arrive now
  assert.deepEqual(await got(page), offsets, `${what} received exactly the channel's messages`);
}

describe('tabs share one socket; the outbox survives reloads', { timeout: 300000 }, () => {
  before(async () => {
    stack = await startStack(PAGE);
    ({ server, web, browser } = stack);
  });

  afterEach(async () => {
    for (const page of opened) await page.close().catch(() => {});
    opened.clear();
  });

  after(() => stack?.stop());

  it('subscribing again from 0 replaces the subscription: history again, then live, once each', async () => {
    const channel = `tabs-again-${Date.now()}`;
    const tab = await openTab(channel, { share: false, name: 'again' });
    for (let n = 0; n < 3; n++) await publish(server.port, channel, n);
    const first = (await history(server.port, channel)).map((m) => m.offset);
    await receivesExactly(tab, first, 'first subscription');
    const reply = await tab.evaluate((c) => window.client.subscribe(c, '0'), channel);
    assert.equal(reply.offset, '0-0', `second subscribe answered ${JSON.stringify(reply)}`);
    await receivesExactly(tab, [...first, ...first], 'replacing subscription (its history)');
    await publish(server.port, channel, 3);
    const all = (await history(server.port, channel)).map((m) => m.offset);
    await receivesExactly(tab, [...first, ...all], 'replacing subscription (live)');
  });

  it('three tabs use one WebSocket and all receive every message', async () => {
    const channel = `tabs-one-${Date.now()}`;
    const tabs = [];
    for (const name of ['a', 'b', 'c']) tabs.push(await openTab(channel, { name }));
    assert.deepEqual(await Promise.all(tabs.map(role)), ['leader', 'follower', 'follower']);
    for (let n = 0; n < 20; n++) await publish(server.port, channel, n);
    const offsets = (await history(server.port, channel)).map((m) => m.offset);
    assert.equal(offsets.length, 20);
    for (const [i, t] of tabs.entries()) await receivesExactly(t, offsets, `tab ${i}`);
    await waitFor('one WebSocket on the server', async () => (await wsConnections(server.port)) === 1, 10000);
    await sleep(500);
    assert.equal(await wsConnections(server.port), 1, 'exactly one WebSocket for three tabs');
    // A follower publishes through the leader.
    await tabs[2].evaluate((c) => window.send(c, 20), channel);
    await waitFor('the follower publish', async () => (await tabs[2].evaluate(() => window.acked.length)) === 1, 10000);
    const all = (await history(server.port, channel)).map((m) => m.offset);
    for (const [i, t] of tabs.entries()) await receivesExactly(t, all, `tab ${i} after a follower publish`);
    for (const t of tabs) await t.close();
  });

  it('when the leader tab closes another takes over and nothing is lost or repeated', async () => {
    const channel = `tabs-switch-${Date.now()}`;
    const [a, b, c] = [await openTab(channel, { name: 'A' }), await openTab(channel, { name: 'B' }),
      await openTab(channel, { name: 'C' })];
    assert.equal(await role(a), 'leader');
    for (let n = 0; n < 10; n++) await publish(server.port, channel, n);
    const first = (await history(server.port, channel)).map((m) => m.offset);
    for (const t of [a, b, c]) await receivesExactly(t, first, 'before the switch');

    // Publish from the server API throughout the switch, and from a follower tab during it.
    let stop = false;
    const background = (async () => {
      for (let n = 10; !stop && n < 200; n++) {
        await publish(server.port, channel, n);
        await sleep(15);
      }
    })();
    await sleep(100);
    const closedAt = Date.now();
    await a.close();
    await c.evaluate((ch) => { for (let n = 1000; n < 1005; n++) window.send(ch, n); }, channel);
    const leader = await waitFor('a new leader', async () => {
      for (const t of [b, c]) if ((await role(t)) === 'leader') return t;
      return null;
    }, 5000);
    const tookOver = (await leader.evaluate(() => window.leaderAt)) - closedAt;
    assert.ok(tookOver < 1000, `a new leader within a second (took ${tookOver} ms)`);
    await sleep(700);
    stop = true;
    await background;
    await waitFor('the follower publishes made during the switch',
      async () => (await c.evaluate(() => window.acked.length)) === 5, 20000);
    const all = await history(server.port, channel);
    const ns = all.map((m) => m.fields.n);
    assert.equal(new Set(ns).size, ns.length, 'every publish stored once');
    for (let n = 1000; n < 1005; n++) assert.ok(ns.includes(n), `tab publish ${n} stored`);
    const offsets = all.map((m) => m.offset);
    for (const [name, t] of [['B', b], ['C', c]]) await receivesExactly(t, offsets, name);
    await waitFor('one WebSocket again', async () => (await wsConnections(server.port)) === 1, 10000);
    for (const t of [b, c]) await t.close();
  });

  it('100 publishes while the server is down, across a reload, are stored once each, in order', async () => {
    const channel = `tabs-outbox-${Date.now()}`;
    await server.kill();
    const page = await openTab(null, { name: 'offline' });
    await page.evaluate((ch) => { for (let n = 0; n < 50; n++) window.send(ch, n); }, channel);
    assert.equal(await page.evaluate(() => window.client.outbox().length), 50);
    await page.reload();
    await page.waitForFunction(() => window.ready === true, null, { timeout: 20000 });
    const waiting = await page.evaluate(() => window.client.outbox());
    assert.deepEqual(waiting.map((e) => e.fields.n), [...Array(50).keys()]);
    assert.ok(waiting.every((e) => e.channel === channel && typeof e.createdAt === 'number' && e.id));
    await page.evaluate((ch) => { for (let n = 50; n < 100; n++) window.send(ch, n); }, channel);
    assert.equal(await page.evaluate(() => window.client.outbox().length), 100);
    server.start();
    await server.ready();
    await waitFor('the outbox to empty', async () =>
      (await page.evaluate(() => window.client.outbox().length)) === 0, 30000);
    await waitFor('the promises of this page load', async () =>
      (await page.evaluate(() => window.acked.length)) === 50, 10000);
    await sleep(500);
    const stored = await history(server.port, channel);
    assert.deepEqual(stored.map((m) => m.fields.n), [...Array(100).keys()], 'exactly the 100, in order');
    const acked = await page.evaluate(() => window.acked);
    for (const [n, offset] of acked) assert.equal(stored[n].offset, offset);
    assert.equal(await page.evaluate(() => window.outboxSize), 0);
    await page.close();
  });

  it('without BroadcastChannel each tab works alone', async () => {
    const channel = `tabs-alone-${Date.now()}`;
    const tabs = [await openTab(channel, { noBroadcast: true, name: 'x' }),
      await openTab(channel, { noBroadcast: true, name: 'y' })];
    assert.deepEqual(await Promise.all(tabs.map(role)), ['standalone', 'standalone']);
    await waitFor('two WebSockets', async () => (await wsConnections(server.port)) === 2, 10000);
    await tabs[0].evaluate((c) => window.send(c, 1), channel);
    await tabs[1].evaluate((c) => window.send(c, 2), channel);
    await publish(server.port, channel, 3);
    await waitFor('both publishes', async () =>
      (await Promise.all(tabs.map((t) => t.evaluate(() => window.acked.length)))).every((n) => n === 1), 10000);
    const offsets = (await history(server.port, channel)).map((m) => m.offset);
    assert.equal(offsets.length, 3);
    for (const [i, t] of tabs.entries()) await receivesExactly(t, offsets, `lone tab ${i}`);
    for (const t of tabs) assert.deepEqual(await roles(t), []);
    for (const t of tabs) await t.close();
  });
});
