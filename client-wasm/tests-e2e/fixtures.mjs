// Test fixtures: redis-server and `redistribute` processes on free ports, the chat page's static
// server, and headless Chromium through playwright-core. Every wait is bounded; every process
// is killed by its own pid when the test ends.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, openSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { createServer as createHttpServer, request } from 'node:http';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

export const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const logs = mkdtempSync(join(tmpdir(), 'redistribute-e2e-'));

/** A TCP port that was free a moment ago. */
export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** Polls `check` until it returns a truthy value or `ms` pass. */
export async function waitFor(what, check, ms = 20000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

function portOpen(port) {
  return new Promise((ok) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => { socket.destroy(); ok(true); });
    socket.once('error', () => ok(false));
  });
}

/** A child process with its output in a log file, killed (SIGKILL) and reaped on demand. */
class Child {
  constructor(name, cmd, args) {
    this.name = name;
    this.cmd = cmd;
    this.args = args;
    this.log = join(logs, `${name}.log`);
  }

  start() {
    const out = openSync(this.log, 'a');
    this.proc = spawn(this.cmd, this.args, { stdio: ['ignore', out, out] });
    this.exited = new Promise((ok) => this.proc.once('exit', ok));
    this.proc.once('error', () => {});
  }

  async kill() {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill('SIGKILL');
    await Promise.race([this.exited, sleep(10000)]);
  }
}

/** redis-server on a free port, no persistence. */
export async function startRedis() {
  const port = await freePort();
  const redis = new Child(`redis-${port}`, 'redis-server', [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
  ]);
  redis.start();
  await waitFor(`redis-server on port ${port}`, () => portOpen(port));
  redis.url = `redis://127.0.0.1:${port}`;
  return redis;
}

/** The `redistribute` binary on a free port, with `extra` flags; `restart()` reuses the port. */
export async function startServer(redisUrl, extra = []) {
  const targetDir = resolve(root, process.env.CARGO_TARGET_DIR ?? 'target');
  const bin = process.env.REDISTRIBUTE_BIN ?? join(targetDir, 'debug', 'redistribute');
  const port = await freePort();
  const server = new Child(`server-${port}`, bin, [
    'serve', '--listen', `127.0.0.1:${port}`, '--redis', redisUrl, ...extra,
  ]);
  server.port = port;
  server.wsUrl = `ws://127.0.0.1:${port}/ws`;
  server.ready = () => waitFor(`server on port ${port}`, async () => {
    try {
      return (await fetch(`http://127.0.0.1:${port}/healthz`)).ok;
    } catch {
      return false;
    }
  });
  server.restart = async () => {
    await server.kill();
    server.start();
    await server.ready();
  };
  server.start();
  await server.ready();
  return server;
}

/** Headless Chromium with a fresh profile (a persistent context: its pages share localStorage). */
export async function launchBrowser() {
  const profile = mkdtempSync(join(tmpdir(), 'redistribute-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    timeout: 60000,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run',
    ],
  });
  context.setDefaultTimeout(30000);
  const close = context.close.bind(context);
  context.close = async () => {
    await close();
    rmSync(profile, { recursive: true, force: true });
  };
  return context;
}

/** Where the children's logs are (printed when a test fails). */
export const logDir = logs;

/** Serves `page` (HTML) at / and the built package under /pkg/, on a free loopback port. */
export function servePages(page) {
  const server = createHttpServer(async (req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    if (path === '/') {
      res.writeHead(200, { 'content-type': 'text/html' }).end(page);
      return;
    }
    const name = path.startsWith('/pkg/') ? path.slice(5) : '';
    if (!/^[\w.-]+$/.test(name)) {
      res.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(join(root, 'client-wasm', 'pkg', name));
      const type = name.endsWith('.wasm') ? 'application/wasm' : 'text/javascript';
      res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' }).end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok(server)));
}

/** An HTTP call to the server on a fresh connection that closes after the reply. */
export function api(port, method, path, body) {
  return new Promise((ok, fail) => {
    const req = request(
      { host: '127.0.0.1', port, method, path, agent: false, timeout: 10000,
        headers: { 'content-type': 'application/json', connection: 'close' } },
      (res) => {
        let text = '';
        res.on('data', (c) => { text += c; });
        res.on('end', () => (res.statusCode < 300
          ? ok(text ? JSON.parse(text) : null)
          : fail(new Error(`${method} ${path}: ${res.statusCode} ${text}`))));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: timed out`)));
    req.on('error', fail);
    req.end(body ? JSON.stringify(body) : undefined);
  });
}

/**
 * The stack most browser suites run on: a Redis, one server on it (with `serverArgs`), `page`
 * served by `servePages` and a headless Chromium. `stop()` closes them in reverse order and
 * prints where the logs are; if starting fails halfway, what was started is stopped first.
 */
export async function startStack(page, serverArgs = []) {
  const stack = {};
  stack.stop = async () => {
    await stack.browser?.close();
    stack.web?.close();
    await stack.server?.kill();
    await stack.redis?.kill();
    console.log(`logs: ${logs}`);
  };
  try {
    stack.redis = await startRedis();
    stack.server = await startServer(stack.redis.url, serverArgs);
    stack.web = await servePages(page);
    stack.browser = await launchBrowser();
  } catch (err) {
    await stack.stop();
    throw err;
  }
  return stack;
}
