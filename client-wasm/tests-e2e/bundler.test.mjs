// The npm package in an app built by a real bundler: `npm pack` of client-wasm/pkg, installed
// (offline) into bundler-app/, built by Vite (production build), served statically and run in
// headless Chromium against a real server: a message published by the page comes back to it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { extname, join, normalize } from 'node:path';
import { launchBrowser, root, startRedis, startServer, waitFor } from './fixtures.mjs';

const app = join(root, 'client-wasm', 'tests-e2e', 'bundler-app');
const run = (cmd, args, cwd) =>
  execFileSync(cmd, args, { cwd, encoding: 'utf8', timeout: 180000, stdio: ['ignore', 'pipe', 'inherit'] });

/** Serves `dir` (the built app) on a free loopback port. */
function serve(dir) {
  const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm' };
  const server = createServer((req, res) => {
    const path = normalize(new URL(req.url, 'http://x').pathname).replace(/^\/+/, '') || 'index.html';
    try {
      const body = readFileSync(join(dir, path));
      res.writeHead(200, { 'content-type': types[extname(path)] ?? 'application/octet-stream' }).end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok(server)));
}

test('a Vite build of the packed package runs in Chromium', { timeout: 300000 }, async () => {
  const packs = mkdtempSync(join(tmpdir(), 'redistribute-bundle-'));
  let redis; let server; let pages; let browser;
  try {
    const packed = JSON.parse(run('npm', ['pack', '--json', '--silent', '--pack-destination', packs],
      join(root, 'client-wasm', 'pkg')));
    run('npm', ['ci', '--silent', '--no-audit', '--no-fund'], app);
    run('npm', ['install', '--no-save', '--offline', '--silent', '--no-audit', '--no-fund',
      join(packs, packed[0].filename)], app);
    run('npx', ['vite', 'build', '--logLevel', 'warn'], app);
    const dist = join(app, 'dist');
    const assets = run('ls', [join(dist, 'assets')], app).split('\n');
    assert.ok(assets.some((f) => f.endsWith('.wasm')), `the bundle holds the .wasm: ${assets}`);

    redis = await startRedis();
    server = await startServer(redis.url);
    pages = await serve(dist);
    browser = await launchBrowser();
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${pages.address().port}/?ws=${encodeURIComponent(server.wsUrl)}`);
    const result = await waitFor('the page result', () => page.evaluate(() => window.result), 60000);
    assert.equal(result.error, undefined, `page failed: ${result.error}`);
    const mine = result.received.filter((m) => m.offset === result.offset);
    assert.equal(mine.length, 1, 'its message came back once');
    assert.deepEqual(mine[0].fields, { text: 'from a bundle' });
  } finally {
    await browser?.close();
    pages?.close();
    await server?.kill();
    await redis?.kill();
    rmSync(packs, { recursive: true, force: true });
  }
});
