// End-to-end: short-lived tokens with `tokenProvider`. Tokens live ~3 s (the server would end
// a connection at `exp` + 5 s); a subscription runs for about 7 lifetimes while the back-end
// publishes throughout. Every message arrives exactly once, in order, with one `connect` and
// no `disconnect`: the provider's tokens replace each other on the live connection. Run
// standalone, and with two tabs sharing one socket (the leader tab's hub calls its provider;
// the follower keeps receiving).
//
// Real headless Chromium (playwright-core), a real `redistribute` server with `--jwt-secret`
// on a real redis-server. Every wait is bounded.
//
// Run: client-wasm/build.sh && cargo build -p redistribute-server && npm test (here).
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  api, startStack, waitFor,
} from './fixtures.mjs';

const SECRET = 'a-test-secret-of-at-least-32-bytes!!';
const LIFETIME_S = 3;
const RUN_MS = 20000;

const PAGE = `<!doctype html><meta charset="utf-8"><title>tokens</title>
<script type="module">
import init, { Client } from '/pkg/redistribute_client.js';
await init();
const q = new URLSearchParams(location.search);
window.got = [];
window.events = [];
const client = new Client({
  targets: [q.get('target')],
  shareSocket: q.get('share') === '1',
  localStorage: false,
  outbox: false,
  tokenProvider: () => window.mintToken(),
});
for (const topic of ['connect', 'disconnect', 'error']) {
  client.on(topic, (e) => window.events.push(topic + ': ' + (e && (e.code || e.message || e.target || e))));
}
client.on('messages', (channel, messages) => { for (const m of messages) window.got.push(m.offset); });
window.client = client;
window.ready = true;
</script>`;

/** An HS256 JWT for `sub` that may read every one-segment channel, living `seconds`. */
function mint(seconds) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = part({ alg: 'HS256', typ: 'JWT' });
  const body = part({ sub: 'reader', exp: Math.floor(Date.now() / 1000) + seconds, subscribe: ['*'] });
  const signature = createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${signature}`;
}

let stack, server, web, browser;
const opened = new Set();
let minted = 0;

async function openTab(share, name) {
  const page = await browser.newPage();
  opened.add(page);
  page.on('pageerror', (e) => console.error(`[${name}] page error:`, e));
  await page.exposeFunction('mintToken', () => { minted += 1; return mint(LIFETIME_S); });
  const q = new URLSearchParams({ target: server.wsUrl, share: share ? '1' : '0' });
  await page.goto(`http://127.0.0.1:${web.address().port}/?${q}`);
  await page.waitForFunction(() => window.ready === true, null, { timeout: 20000 });
  return page;
}

describe('tokenProvider keeps a stream running across short token lifetimes', { timeout: 300000 }, () => {
  before(async () => {
    stack = await startStack(PAGE, ['--jwt-secret', SECRET, '--allow-open-api']);
    ({ server, web, browser } = stack);
  });

  afterEach(async () => {
    for (const page of opened) await page.close().catch(() => {});
    opened.clear();
  });

  after(() => stack?.stop());

  for (const share of [false, true]) {
    it(`no gap, no duplicate, no reconnect over ~7 lifetimes (shareSocket ${share})`, async () => {
      const channel = `feed-${share}-${Date.now()}`;
      minted = 0;
      const tabs = [await openTab(share, 'A')];
      if (share) tabs.push(await openTab(share, 'B'));
      for (const tab of tabs) {
        await tab.evaluate((c) => window.client.subscribe(c, '$'), channel);
      }
      const published = [];
      const end = Date.now() + RUN_MS;
      while (Date.now() < end) {
        const reply = await api(server.port, 'POST', '/api/publish', {
          channel, fields: { n: published.length },
        });
        published.push(reply.offset);
        await sleep(100);
      }
      for (const [i, tab] of tabs.entries()) {
        await waitFor(`tab ${i}: all ${published.length} messages`,
          () => tab.evaluate((n) => window.got.length >= n, published.length), 30000);
        await sleep(300);
        const got = await tab.evaluate(() => window.got);
        assert.deepEqual(got, published, `tab ${i}: every message once, in order`);
        const events = await tab.evaluate(() => window.events);
        assert.deepEqual(events.filter((e) => !e.startsWith('connect')), [], `tab ${i}: ${events}`);
        assert.equal(events.filter((e) => e.startsWith('connect')).length, 1, `tab ${i}: ${events}`);
      }
      // One call per connection plus one per lifetime: at least 6 in 20 s.
      assert.ok(minted >= 6, `the provider was called ${minted} times`);
    });
  }
});
