// End-to-end: the browser client keeps its subscription when Redis restarts while it fails over
// to another instance. Its resubscribe there is answered `unavailable` until Redis is back; the
// client must retry (never give the subscription up) and then receive every message published
// after Redis returned, exactly once.
//
// Real headless Chromium (playwright-core), two real `redistribute` servers and a real
// redis-server on free ports. Every wait is bounded.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  api, launchBrowser, logDir, servePages, startRedis, startServer, waitFor,
} from './fixtures.mjs';

const PAGE = `<!doctype html><meta charset="utf-8"><title>restart</title>
<script type="module">
import init, { Client } from '/pkg/redistribute_client.js';
await init();
const q = new URLSearchParams(location.search);
window.got = [];
window.errors = [];
const client = new Client({ targets: q.get('targets').split(','), shareSocket: false });
client.on('messages', (channel, messages) => { for (const m of messages) window.got.push(m.offset); });
client.on('error', (e) => window.errors.push(String(e && (e.code || e.message || e))));
await client.subscribe('restart', '0');
window.ready = true;
</script>`;

async function publish(port, n) {
  const reply = await api(port, 'POST', '/api/publish', { channel: 'restart', fields: { n } });
  return reply.offset;
}

/** Publishes until one is acknowledged (Redis may still be coming back). */
async function publishWhenBack(port, n) {
  let offset;
  await waitFor(`publish ${n} acknowledged`, async () => {
    try {
      offset = await publish(port, n);
      return true;
    } catch {
      return false;
    }
  }, 30000);
  return offset;
}

let redis, a, b, web, browser;

describe('the browser client survives a Redis restart during a failover', { timeout: 180000 }, () => {
  before(async () => {
    redis = await startRedis();
    a = await startServer(redis.url);
    b = await startServer(redis.url);
    web = await servePages(PAGE);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    web?.close();
    await a?.kill();
    await b?.kill();
    await redis?.kill();
    console.log(`logs: ${logDir}`);
  });

  it('retries the resubscribe and receives everything published after Redis is back', async () => {
    const page = await browser.newPage();
    page.on('pageerror', (e) => console.error('page error:', e));
    const targets = [a.wsUrl, b.wsUrl].join(',');
    await page.goto(`http://127.0.0.1:${web.address().port}/?targets=${encodeURIComponent(targets)}`);
    await page.waitForFunction(() => window.ready === true, null, { timeout: 20000 });
    const before = [await publish(b.port, 1), await publish(b.port, 2)];
    await waitFor('the first messages', async () => (await page.evaluate(() => window.got.length)) >= 2);
    assert.deepEqual(await page.evaluate(() => window.got), before);

    // Redis goes away, then the instance the page is on: the page fails over to the other
    // instance, whose answer to its resubscribe is `unavailable` until Redis is back.
    await redis.kill();
    await a.kill();
    await waitFor('the resubscribe refused while Redis is down', async () => {
      const errors = await page.evaluate(() => window.errors);
      return errors.some((e) => /unavailable/.test(e));
    }, 30000);
    await sleep(1500); // a few more retries
    redis.start();
    const afterRestart = [await publishWhenBack(b.port, 3)];
    for (let n = 4; n <= 6; n += 1) afterRestart.push(await publish(b.port, n));
    await waitFor('every message published after the restart', async () => {
      const got = await page.evaluate(() => window.got);
      return afterRestart.every((o) => got.includes(o));
    }, 30000);
    await sleep(300); // a duplicate would arrive now
    const got = await page.evaluate(() => window.got);
    assert.deepEqual(got.slice(0, 2), before);
    assert.deepEqual(got.filter((o) => afterRestart.includes(o)), afterRestart, 'once each, in order');
    assert.equal(new Set(got).size, got.length, 'no duplicates');
    await page.close();
  });
});
