// End-to-end: subscription objects and states in the browser client.
//
// * A subscription object goes unsubscribed → subscribing → subscribed; with the page taken
//   offline while its server restarts, the object is `subscribing` and the client
//   `connecting`; back online it is `subscribed` again (a `subscribed` event with `recovered`)
//   and every message published meanwhile arrives once, in order, through the object.
// * The same for an object of a follower tab (the socket shared with a leader tab).
// * After a restart the token no longer allows a channel: its object ends `unsubscribed` with an
//   `error` event and the `forbidden` error passed to `unsubscribed`; another channel resumes.
// * One object per channel: a second `newSubscription` throws `duplicate_subscription`;
//   `client.subscribe` uses the channel's object.
//
// Real headless Chromium (playwright-core), a real `redistribute` server (with `--jwt-secret`)
// and redis-server on free ports. Every wait is bounded.
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  api, startStack, waitFor,
} from './fixtures.mjs';

const SECRET = 'a-test-secret-of-at-least-32-bytes!!';

const PAGE = `<!doctype html><meta charset="utf-8"><title>subscriptions</title>
<script type="module">
import init, { Client } from '/pkg/redistribute_client.js';
await init();
const q = new URLSearchParams(location.search);
window.log = {};
window.clientStates = [];
const client = new Client({
  targets: [q.get('target')],
  shareSocket: q.get('share') === '1',
  localStorage: false,
  outbox: false,
  tokenProvider: () => window.mintToken(),
});
window.initialState = client.state;
client.on('state', (s) => window.clientStates.push(s));
window.client = client;
window.track = (channel, offset) => {
  const sub = client.newSubscription(channel, { offset });
  const log = (window.log[channel] = { states: [], events: [], got: [], subscribed: [] });
  log.initial = sub.state;
  sub.on('state', (s) => log.states.push(s));
  sub.on('subscribed', (ctx) => { log.events.push('subscribed'); log.subscribed.push(ctx); });
  sub.on('messages', (ms) => { for (const m of ms) log.got.push(m.offset); });
  sub.on('gap', (e) => log.events.push('gap:' + e.code));
  sub.on('error', (e) => log.events.push('error:' + e.code));
  sub.on('unsubscribed', (e) => log.events.push('unsubscribed:' + (e ? e.code : 'none')));
  return sub.subscribe();
};
window.ready = true;
</script>`;

/** An HS256 JWT for `reader` that may read `channels`. */
function mint(channels) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = part({ alg: 'HS256', typ: 'JWT' });
  const body = part({ sub: 'reader', exp: Math.floor(Date.now() / 1000) + 600, subscribe: channels });
  const signature = createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${signature}`;
}

let stack, server, web, browser;
const opened = new Set();
/** The channels tokens minted from now on allow. */
let allowed = ['*'];

async function openTab(share, name) {
  const page = await browser.newPage();
  opened.add(page);
  page.on('pageerror', (e) => console.error(`[${name}] page error:`, e));
  await page.exposeFunction('mintToken', () => mint(allowed));
  const q = new URLSearchParams({ target: server.wsUrl, share: share ? '1' : '0' });
  await page.goto(`http://127.0.0.1:${web.address().port}/?${q}`);
  await page.waitForFunction(() => window.ready === true, null, { timeout: 20000 });
  return page;
}

const publish = async (channel, n) =>
  (await api(server.port, 'POST', '/api/publish', { channel, fields: { n } })).offset;

const logOf = (page, channel) => page.evaluate((c) => window.log[c], channel);
const stateOf = (page, channel) =>
  page.evaluate((c) => window.client.getSubscription(c).state, channel);

/** Waits until the page's object of `channel` got exactly `expected` and nothing more. */
async function receivesExactly(page, channel, expected, what) {
  await waitFor(what, async () => (await logOf(page, channel)).got.length >= expected.length);
  await sleep(300); // a duplicate would arrive now
  assert.deepEqual((await logOf(page, channel)).got, expected, what);
}

/**
 * Kills the server, waits until `pages` see `channel` subscribing, runs `whileDown`, restarts
 * the server.
 */
async function restart(pages, channel, offline, whileDown = () => {}) {
  if (offline) await pages[0].context().setOffline(true);
  await server.kill();
  for (const page of pages) {
    await waitFor('subscribing while the server is down',
      async () => (await stateOf(page, channel)) === 'subscribing');
    assert.equal(await page.evaluate(() => window.client.state), 'connecting');
  }
  whileDown();
  server.start();
  await server.ready();
}

describe('subscription objects and states', { timeout: 240000 }, () => {
  before(async () => {
    stack = await startStack(PAGE, ['--jwt-secret', SECRET, '--allow-open-api']);
    ({ server, web, browser } = stack);
  });

  afterEach(async () => {
    for (const page of opened) await page.close().catch(() => {});
    opened.clear();
    allowed = ['*'];
  });

  after(() => stack?.stop());

  it('states and events across a restart with the page offline; exactly once', async () => {
    const channel = `objects-${Date.now()}`;
    const page = await openTab(false, 'A');
    const first = await page.evaluate((c) => window.track(c, '$'), channel);
    assert.equal(first.recovered, false, '`$` recovers nothing');
    let log = await logOf(page, channel);
    assert.equal(log.initial, 'unsubscribed');
    assert.deepEqual(log.states, ['subscribing', 'subscribed']);
    assert.deepEqual(log.events, ['subscribed']);
    assert.equal(await page.evaluate(() => window.initialState), 'disconnected');
    assert.deepEqual(await page.evaluate(() => window.clientStates), ['connecting', 'connected']);

    const expected = [await publish(channel, 1)];
    await receivesExactly(page, channel, expected, 'the first message');
    await restart([page], channel, true);
    for (const n of [2, 3, 4]) expected.push(await publish(channel, n));
    await page.context().setOffline(false);
    await page.evaluate(() => window.dispatchEvent(new Event('online')));
    await waitFor('subscribed again', async () => (await stateOf(page, channel)) === 'subscribed');
    await receivesExactly(page, channel, expected, 'everything published meanwhile, once');

    log = await logOf(page, channel);
    assert.deepEqual(log.states, ['subscribing', 'subscribed', 'subscribing', 'subscribed']);
    assert.deepEqual(log.events, ['subscribed', 'subscribed']);
    assert.equal(log.subscribed[1].recovered, true, JSON.stringify(log.subscribed));
    assert.equal(log.subscribed[1].truncated, false);
    const states = await page.evaluate(() => window.clientStates);
    assert.deepEqual(states.slice(-2), ['connecting', 'connected'], `${states}`);

    // Unsubscribe, publish, subscribe again: continues after the last message, recovered.
    await page.evaluate((c) => window.client.getSubscription(c).unsubscribe(), channel);
    assert.equal(await stateOf(page, channel), 'unsubscribed');
    expected.push(await publish(channel, 5));
    const again = await page.evaluate((c) => window.client.getSubscription(c).subscribe(), channel);
    assert.equal(again.recovered, true);
    await receivesExactly(page, channel, expected, 'the message published while unsubscribed');
    log = await logOf(page, channel);
    assert.deepEqual(log.events.slice(-2), ['unsubscribed:none', 'subscribed']);

    await page.evaluate(() => window.client.close());
    assert.equal(await page.evaluate(() => window.client.state), 'closed');
    log = await logOf(page, channel);
    assert.equal(log.events.at(-1), 'unsubscribed:closed', `${log.events}`);
    assert.equal(log.states.at(-1), 'unsubscribed');
  });

  it('a follower tab\'s object has the same states across a server restart', async () => {
    const channel = `shared-${Date.now()}`;
    const leader = await openTab(true, 'leader');
    await waitFor('a leader', () => leader.evaluate(() => window.client.role === 'leader'));
    const follower = await openTab(true, 'follower');
    await waitFor('a follower', () => follower.evaluate(() => window.client.role === 'follower'));
    await follower.evaluate((c) => window.track(c, '0'), channel);
    await leader.evaluate((c) => window.track(c, '0'), channel);
    const expected = [await publish(channel, 1)];
    for (const page of [leader, follower]) await receivesExactly(page, channel, expected, 'first');

    await restart([leader, follower], channel, false);
    for (const n of [2, 3]) expected.push(await publish(channel, n));
    for (const page of [follower, leader]) {
      await waitFor('subscribed again', async () => (await stateOf(page, channel)) === 'subscribed');
      await receivesExactly(page, channel, expected, 'everything, once');
      const log = await logOf(page, channel);
      assert.deepEqual(log.states, ['subscribing', 'subscribed', 'subscribing', 'subscribed']);
      assert.equal(log.subscribed.at(-1).recovered, true, JSON.stringify(log.subscribed));
    }
  });

  it('a resubscribe refused after a restart ends the object with the error', async () => {
    const stamp = Date.now();
    const [chat, news] = [`chat-${stamp}`, `news-${stamp}`];
    const page = await openTab(false, 'A');
    await page.evaluate((c) => window.track(c, '$'), chat);
    await page.evaluate((c) => window.track(c, '$'), news);
    await restart([page], chat, false, () => { allowed = [news]; });
    await page.evaluate(() => window.dispatchEvent(new Event('online')));
    await waitFor('chat ended', async () => (await stateOf(page, chat)) === 'unsubscribed');
    await waitFor('news resumed', async () => (await stateOf(page, news)) === 'subscribed');
    const log = await logOf(page, chat);
    assert.deepEqual(log.events.slice(-2), ['error:forbidden', 'unsubscribed:forbidden'],
      `${log.events}`);
    assert.deepEqual(log.states, ['subscribing', 'subscribed', 'subscribing', 'unsubscribed']);
    const expected = [await publish(news, 1)];
    await receivesExactly(page, news, expected, 'the other channel goes on');
  });

  it('one object per channel; client.subscribe uses it', async () => {
    const channel = `one-${Date.now()}`;
    const page = await openTab(false, 'A');
    const result = await page.evaluate(async (c) => {
      const sub = window.client.newSubscription(c);
      let code;
      try { window.client.newSubscription(c); } catch (e) { code = e.code; }
      const same = window.client.getSubscription(c) !== undefined;
      const states = [];
      sub.on('state', (s) => states.push(s));
      const ctx = await window.client.subscribe(c, '0');
      const state = sub.state;
      window.client.removeSubscription(sub);
      const fresh = window.client.newSubscription(c).state;
      let removed;
      try { await sub.subscribe(); } catch (e) { removed = e.code; }
      return { code, same, states, state, keys: Object.keys(ctx).sort(), fresh, removed };
    }, channel);
    assert.deepEqual(result, {
      code: 'duplicate_subscription',
      same: true,
      states: ['subscribing', 'subscribed'],
      state: 'subscribed',
      keys: ['channel', 'offset', 'recovered', 'truncated'],
      fresh: 'unsubscribed',
      removed: 'cancelled',
    });
  });
});
