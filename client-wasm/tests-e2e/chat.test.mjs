// End-to-end: the chat example (examples/chat/) on the built package (client-wasm/pkg/) in
// headless Chromium, against two real `redistribute` servers sharing one real Redis.
//
// Page A (alice) talks to server 1, page B (bob) to server 2; their pages come from two static
// servers (two origins), so each has its own localStorage. B never disconnects and
// subscribed before the first message, so B's list of offsets is the channel's history: A's list
// must equal it exactly (same messages, same order, none twice) after every disruption.
//
// Run: client-wasm/build.sh && cargo build -p redistribute-server && npm test (here).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { serve } from '../../examples/chat/serve.mjs';
import { launchBrowser, logDir, startRedis, startServer, waitFor } from './fixtures.mjs';

const channel = `chat-${Date.now()}`;

let redis, s1, s2, webA, webB, browser;
let alice, bob;

/** Opens the chat page from `web` as `name` on `server`; the page records when its sockets open. */
async function openChat(web, server, name) {
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error(`[${name}] page error:`, e));
  await page.addInitScript(() => {
    window.__wsOpens = [];
    const Native = window.WebSocket;
    window.WebSocket = class extends Native {
      constructor(...args) {
        super(...args);
        this.addEventListener('open', () => window.__wsOpens.push(performance.now()));
      }
    };
  });
  const url = `http://127.0.0.1:${web.address().port}/examples/chat/`;
  await page.goto(`${url}?targets=${server.wsUrl}&channel=${channel}&name=${name}`);
  return page;
}

const connected = (page) => page.waitForSelector('#status.connected');

/** The messages the page shows: offset, text and whether it came from the cache. */
const shown = (page) =>
  page.$$eval('#messages li', (lis) =>
    lis.map((li) => ({
      offset: li.dataset.offset,
      text: li.querySelector('.text').textContent,
      restored: li.classList.contains('restored'),
    })));

const offsets = async (page) => (await shown(page)).map((m) => m.offset);

/** Waits until the page shows a message with this text. */
const sees = (page, text) =>
  page.waitForFunction(
    (t) => [...document.querySelectorAll('#messages .text')].some((e) => e.textContent === t),
    text,
  );

/** Sends through the page's form and waits until the sender sees its own message. */
async function send(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
  await sees(page, text);
}

/**
 * A's messages equal B's exactly. A sentinel sent last makes sure nothing (no duplicate) is
 * still in flight to A: per channel, delivery is in offset order.
 */
async function assertInSync(text) {
  await send(bob, text);
  await sees(alice, text);
  const [a, b] = [await offsets(alice), await offsets(bob)];
  assert.equal(new Set(a).size, a.length, `alice shows a message twice: ${a}`);
  assert.deepEqual(a, b);
}

describe('redistribute-client in Chromium', { timeout: 240000 }, () => {
  before(async () => {
    redis = await startRedis();
    [s1, s2] = [await startServer(redis.url), await startServer(redis.url)];
    [webA, webB] = [await serve(0), await serve(0)];
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    webA?.close();
    webB?.close();
    for (const child of [s1, s2, redis]) await child?.kill();
    console.log(`# process logs: ${logDir}`);
  });

  it('two pages chat through two servers', async () => {
    alice = await openChat(webA, s1, 'alice');
    bob = await openChat(webB, s2, 'bob');
    await Promise.all([connected(alice), connected(bob)]);
    await send(bob, 'hello from bob');
    await sees(alice, 'hello from bob');
    await send(alice, 'hi bob');
    await sees(bob, 'hi bob');
    assert.deepEqual((await shown(alice)).map((m) => m.text), ['hello from bob', 'hi bob']);
    await assertInSync('sync 1');
  });

  it('a reload shows history from localStorage before the socket opens, then what was missed, once', async () => {
    const before = await offsets(alice);
    await alice.close();
    await send(bob, 'missed 1');
    await send(bob, 'missed 2');

    alice = await openChat(webA, s1, 'alice');
    const restoredAt = await waitFor('history restored', () =>
      alice.evaluate(() => window.chat?.events.find((e) => e.type === 'restored')?.t));
    const restored = (await shown(alice)).filter((m) => m.restored);
    assert.deepEqual(restored.map((m) => m.offset), before, 'history comes from localStorage');

    await connected(alice);
    const firstOpen = await alice.evaluate(() => window.__wsOpens[0]);
    assert.ok(restoredAt < firstOpen, `history shown (${restoredAt}) before the socket opened (${firstOpen})`);

    await sees(alice, 'missed 2');
    await assertInSync('sync 2');
  });

  it('the server is killed and restarted: the page reconnects by itself and misses nothing', async () => {
    await s1.kill();
    await alice.waitForSelector('#status.disconnected');
    // Published through server 2 (same Redis) while alice's server is down.
    for (const n of [1, 2, 3]) await send(bob, `during outage ${n}`);

    await s1.restart(); // same port
    await connected(alice);
    await sees(alice, 'during outage 3');
    await assertInSync('sync 3');

    const kinds = await alice.evaluate(() => window.chat.events.map((e) => e.type));
    assert.ok(kinds.lastIndexOf('connect') > kinds.lastIndexOf('disconnect'), String(kinds));
  });

  it('a page opened while its server is down shows the cache, then catches up once it is back', async () => {
    const before = await offsets(alice);
    await alice.close();
    await s1.kill();
    await send(bob, 'while closed and down');

    alice = await openChat(webA, s1, 'alice');
    await waitFor('history restored', () =>
      alice.evaluate(() => window.chat?.events.some((e) => e.type === 'restored')));
    assert.deepEqual((await shown(alice)).map((m) => m.offset), before);
    assert.equal(await alice.evaluate(() => window.__wsOpens.length), 0, 'no socket opened yet');

    await s1.restart();
    await connected(alice);
    await sees(alice, 'while closed and down');
    await assertInSync('sync 4');
  });

  it('a full localStorage quota does not break delivery', async () => {
    const junk = await alice.evaluate(() => {
      let chunk = 'x'.repeat(1 << 20);
      let keys = 0;
      while (chunk.length > 0) {
        try {
          localStorage.setItem(`junk-${keys}`, chunk);
          keys += 1;
        } catch {
          chunk = chunk.slice(0, chunk.length >> 1);
        }
      }
      return keys;
    });
    assert.ok(junk > 0);

    await send(bob, 'after quota 1');
    await sees(alice, 'after quota 1');
    await send(bob, 'after quota 2');
    await sees(alice, 'after quota 2');
    await alice.waitForSelector('#errors li[data-code="quota_exceeded"]');
    await assertInSync('sync 5');

    // The page's own data was not evicted to make room for the cache.
    const left = await alice.evaluate(
      () => Object.keys(localStorage).filter((k) => k.startsWith('junk-')).length);
    assert.equal(left, junk);
    await alice.evaluate(() => {
      for (const k of Object.keys(localStorage)) if (k.startsWith('junk-')) localStorage.removeItem(k);
    });
  });
});
