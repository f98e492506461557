// End-to-end: history and rewind in the browser client, across page reloads.
//
// * `history` pages forwards and backwards through 2,500 stored messages and matches what the
//   server's `/api/history` holds; a trimmed range reports the trim.
// * `subscribe(channel, {offset, rewind})`: a first visit rewinds (the last N messages, then
//   live, each once); a reload with the cached offset from `load` resumes from it instead
//   (nothing twice, nothing lost, no rewind); with the socket shared by two tabs, the other
//   tab's rewind and history go through the leader.
//
// Real headless Chromium (playwright-core), a real `redistribute` server and redis-server on
// free ports (the `startStack` fixture). Every wait is bounded.
//
// Run: client-wasm/build.sh && cargo build -p redistribute-server && npm test (here).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { api, startStack, waitFor } from './fixtures.mjs';

const PAGE = `<!doctype html><meta charset="utf-8"><title>history</title>
<script type="module">
import init, { Client } from '/pkg/redistribute_client.js';
await init();
const q = new URLSearchParams(location.search);
window.got = {};
const client = new Client({
  targets: q.get('targets').split(','),
  localStorage: true,
  shareSocket: q.get('share') === '1',
});
client.on('messages', (channel, messages) => {
  (window.got[channel] ??= []).push(...messages.map((m) => m.offset));
});
window.client = client;
// Every page of a range, following next while more.
window.pages = async (channel, options) => {
  const seen = [];
  let pages = 0;
  for (;;) {
    const page = await client.history(channel, options);
    pages += 1;
    seen.push(...page.messages.map((m) => m.offset));
    if (!page.more) return { seen, pages };
    options = { ...options, [options.reverse ? 'to' : 'from']: page.next };
  }
};
window.ready = true;
</script>`;

let stack;
let port;

async function publish(channel, n, maxlen) {
  const body = { channel, fields: { n } };
  if (maxlen) body.maxlen = maxlen;
  return (await api(port, 'POST', '/api/publish', body)).offset;
}

async function open(share = false, page = undefined) {
  const tab = page ?? await stack.browser.newPage();
  tab.on('pageerror', (e) => console.error('page error:', e));
  const q = new URLSearchParams({ targets: stack.server.wsUrl, share: share ? '1' : '0' });
  await tab.goto(`http://127.0.0.1:${stack.web.address().port}/?${q}`);
  await tab.waitForFunction(() => window.ready === true, null, { timeout: 20000 });
  return tab;
}

const got = (tab, channel) => tab.evaluate((c) => window.got[c] ?? [], channel);

async function receives(tab, channel, expected, what) {
  await waitFor(what, async () => (await got(tab, channel)).length >= expected.length, 20000);
  assert.deepEqual(await got(tab, channel), expected, what);
}

describe('history and rewind in the browser', { timeout: 300000 }, () => {
  before(async () => {
    stack = await startStack(PAGE, ['--min-maxlen', '1']);
    port = stack.server.port;
  });

  after(() => stack?.stop());

  it('pages through history both ways and reports a trim', async () => {
    const stored = [];
    for (let n = 0; n < 2500; n++) stored.push(await publish('ledger', n));
    const tab = await open();
    const forward = await tab.evaluate(() => window.pages('ledger', { limit: 1000 }));
    assert.deepEqual(forward.seen, stored);
    assert.ok(forward.pages <= 4, `${forward.pages} pages`);
    const backward = await tab.evaluate(() => window.pages('ledger', { limit: 700, reverse: true }));
    assert.deepEqual(backward.seen, [...stored].reverse());
    const server = await api(port, 'GET', `/api/history?channel=ledger&from=${stored[99]}&to=${stored[199]}&limit=1000`);
    const window100 = await tab.evaluate(
      ([from, to]) => window.client.history('ledger', { from, to, limit: 1000 }),
      [stored[99], stored[199]],
    );
    assert.deepEqual(window100.messages.map((m) => m.offset), server.messages.map((m) => m.offset));
    assert.equal(window100.messages[0].fields.n, 100);

    for (let n = 0; n < 40; n++) await publish('short', n, 5);
    const trimmed = await tab.evaluate(() => window.client.history('short'));
    assert.equal(trimmed.truncated, true);
    assert.equal(trimmed.gap.from, '0-0');
    assert.ok(trimmed.messages.length >= 5 && trimmed.messages.length < 40);
    const refused = await tab.evaluate(() => window.client.history('short', { limit: 5000 }).catch((e) => e.code));
    assert.equal(refused, 'bad_request');
    await tab.close();
  });

  it('rewinds on a first visit and resumes from the cache after a reload', async () => {
    const stored = [];
    for (let n = 0; n < 10; n++) stored.push(await publish('news', n));
    const tab = await open();
    const first = await tab.evaluate(async () => {
      const { lastOffset } = await window.client.load('news');
      return { lastOffset: lastOffset ?? null, sub: await window.client.subscribe('news', { offset: lastOffset, rewind: 3 }) };
    });
    assert.equal(first.lastOffset, null);
    assert.equal(first.sub.offset, stored[6]);
    await receives(tab, 'news', stored.slice(7), 'the last three messages');
    stored.push(await publish('news', 10));
    await receives(tab, 'news', stored.slice(7), 'then live');

    // Reload: the cached offset wins over the rewind, so nothing comes twice.
    await tab.reload();
    await tab.waitForFunction(() => window.ready === true, null, { timeout: 20000 });
    stored.push(await publish('news', 11)); // published while the page was away
    const again = await tab.evaluate(async () => {
      const { lastOffset } = await window.client.load('news');
      return { lastOffset, sub: await window.client.subscribe('news', { offset: lastOffset, rewind: 3 }) };
    });
    assert.equal(again.lastOffset, stored[10]);
    assert.equal(again.sub.offset, stored[10]);
    await receives(tab, 'news', [stored[11]], 'what was missed, once');
    stored.push(await publish('news', 12));
    await receives(tab, 'news', stored.slice(11), 'then live again');

    // The latest value, and history after the reload.
    const latest = await tab.evaluate(() => window.client.subscribe('news-latest', { rewind: 1 }));
    assert.equal(latest.offset, '0-0');
    const page = await tab.evaluate(() => window.client.history('news', { limit: 2, reverse: true }));
    assert.deepEqual(page.messages.map((m) => m.offset), [stored[12], stored[11]]);
    assert.equal(page.more, true);
    // A subscription object reads its channel's history too.
    const fromObject = await tab.evaluate(() => window.client.getSubscription('news').history({ limit: 1, reverse: true }));
    assert.deepEqual(fromObject.messages.map((m) => m.offset), [stored[12]]);
    await tab.close();
  });

  it('rewinds and reads history through the tab that holds the shared socket', async () => {
    const stored = [];
    for (let n = 0; n < 8; n++) stored.push(await publish('shared', n));
    const leader = await open(true);
    await leader.evaluate(() => window.client.subscribe('shared', '0'));
    await receives(leader, 'shared', stored, 'the leader has everything');
    const follower = await open(true, await leader.context().newPage());
    await waitFor('a follower', () => follower.evaluate(() => window.client.role === 'follower'));
    const sub = await follower.evaluate(() => window.client.subscribe('shared', { rewind: 2 }));
    // Resolved by the leader: just before the oldest of the two (at or after the one before).
    const key = (o) => o.split('-').map(BigInt);
    const before = (a, b) => key(a)[0] < key(b)[0] || (key(a)[0] === key(b)[0] && key(a)[1] < key(b)[1]);
    assert.ok(!before(sub.offset, stored[5]) && before(sub.offset, stored[6]), sub.offset);
    await receives(follower, 'shared', stored.slice(6), 'the follower rewinds two');
    stored.push(await publish('shared', 8));
    await receives(follower, 'shared', stored.slice(6), 'and follows live');
    const page = await follower.evaluate(() => window.client.history('shared', { from: '0', limit: 3 }));
    assert.deepEqual(page.messages.map((m) => m.offset), stored.slice(0, 3));
    assert.equal(page.next, stored[2]);
    await follower.close();
    await leader.close();
  });
});
