// End-to-end: presence across two server instances on one Redis, in headless Chromium. Alice's
// page is connected to instance one, Bob's to instance two; both subscribe to a presence
// channel with `joinLeave`. Each sees both members (with the token's `sub` and `info`), Bob
// hears Alice join. Instance one is then killed (SIGKILL, no drain): Alice is gone from Bob's
// `presence` within the documented bound (expiry + a third of it + the window), and Bob hears
// her leave exactly once.
//
// Real headless Chromium (playwright-core), two real `redistribute` servers with
// `--jwt-secret` and `--presence-channels` on a real redis-server. Every wait is bounded.
//
// Run: client-wasm/build.sh && cargo build -p redistribute-server && npm test (here).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { startServer, startStack, waitFor } from './fixtures.mjs';

const SECRET = 'a-presence-secret-of-at-least-32-bytes';
const TTL_S = 3;
const WINDOW_MS = 200;
const FLAGS = [
  '--jwt-secret', SECRET, '--allow-open-api',
  '--presence-channels', 'room:*',
  '--presence-ttl-secs', String(TTL_S),
  '--presence-window-ms', String(WINDOW_MS),
];

const PAGE = `<!doctype html><meta charset="utf-8"><title>presence</title>
<script type="module">
import init, { Client } from '/pkg/redistribute_client.js';
await init();
const q = new URLSearchParams(location.search);
window.changes = [];
window.errors = [];
const client = new Client({
  targets: [q.get('target')],
  token: q.get('token'),
  shareSocket: false,
  localStorage: false,
  outbox: false,
  joinLeave: true,
});
client.on('presence', (channel, change) => window.changes.push({ channel, ...change }));
client.on('error', (e) => window.errors.push(e.code + ': ' + e.message));
window.client = client;
window.ready = true;
</script>`;

/** An HS256 JWT for `sub` that may read `room:*` and `chat`, with an `info` claim. */
function mint(sub) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = part({ alg: 'HS256', typ: 'JWT' });
  const body = part({
    sub, exp: Math.floor(Date.now() / 1000) + 600, subscribe: ['room:*', 'chat'], info: { name: sub.toUpperCase() },
  });
  const signature = createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${signature}`;
}

let stack, two, web, browser;

async function openPage(server, user) {
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error(`[${user}] page error:`, e));
  const q = new URLSearchParams({ target: server.wsUrl, token: mint(user) });
  await page.goto(`http://127.0.0.1:${web.address().port}/?${q}`);
  await page.waitForFunction(() => window.ready === true, null, { timeout: 20000 });
  await page.evaluate(() => window.client.subscribe('room:e2e'));
  return page;
}

/** The users `page` sees in `room:e2e`, sorted. */
async function users(page) {
  const members = await page.evaluate(() => window.client.presence('room:e2e'));
  return members.map((m) => m.user).sort();
}

/** How often `page` heard `user` join or leave `room:e2e`. */
async function heard(page, kind, user) {
  const changes = await page.evaluate(() => window.changes);
  return changes
    .filter((c) => c.channel === 'room:e2e')
    .flatMap((c) => c[kind])
    .filter((m) => m.user === user).length;
}

describe('presence across two instances, one of them killed', { timeout: 180000 }, () => {
  before(async () => {
    stack = await startStack(PAGE, FLAGS);
    ({ web, browser } = stack);
    two = await startServer(stack.redis.url, FLAGS);
  });

  after(async () => {
    await two?.kill();
    await stack?.stop();
  });

  it('lists members of both instances and loses the killed one\'s within the bound, once', async () => {
    const bob = await openPage(two, 'bob');
    const alice = await openPage(stack.server, 'alice');
    await waitFor('both members on both instances', async () =>
      JSON.stringify(await users(bob)) === '["alice","bob"]'
      && JSON.stringify(await users(alice)) === '["alice","bob"]');
    const members = await bob.evaluate(() => window.client.presence('room:e2e'));
    const a = members.find((m) => m.user === 'alice');
    assert.deepEqual(a.info, { name: 'ALICE' });
    assert.match(a.client, /^[0-9a-f]+-\d+$/);
    const stats = await bob.evaluate(() => window.client.presenceStats('room:e2e'));
    assert.deepEqual(stats, { clients: 2, users: 2 });
    await waitFor('bob hears alice join', async () => (await heard(bob, 'joins', 'alice')) === 1);

    await stack.server.kill();
    const killed = Date.now();
    const boundMs = TTL_S * 1000 + (TTL_S * 1000) / 3 + WINDOW_MS;
    await waitFor('alice gone from bob\'s presence', async () =>
      JSON.stringify(await users(bob)) === '["bob"]', boundMs + 15000);
    await waitFor('bob hears alice leave', async () => (await heard(bob, 'leaves', 'alice')) >= 1,
      boundMs + 15000);
    const leftAfter = Date.now() - killed;
    assert.ok(leftAfter <= boundMs + 15000, `the leave came ${leftAfter} ms after the kill`);
    // Heartbeats and queries go on: still one leave, and bob never left.
    await sleep(TTL_S * 1000);
    await users(bob);
    assert.equal(await heard(bob, 'leaves', 'alice'), 1);
    assert.equal(await heard(bob, 'leaves', 'bob'), 0);
    // A channel without presence is refused with `not_found`.
    const refused = await bob.evaluate(() => window.client.presence('chat').then(
      () => 'resolved', (e) => e.code));
    assert.equal(refused, 'not_found');
    assert.deepEqual(await bob.evaluate(() => window.errors), []);
  });
});
