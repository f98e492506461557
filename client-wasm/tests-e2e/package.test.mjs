// The npm package as a web app gets it: `npm pack` in client-wasm/pkg/ gives a tarball that
// installs (offline: it has no dependencies), ships its types, and whose module works once
// instantiated (here in Node, without a server: `load` needs no network).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { root } from './fixtures.mjs';

const npm = (args, cwd) =>
  execFileSync('npm', [...args, '--no-audit', '--no-fund', '--silent'], { cwd, encoding: 'utf8', timeout: 120000 });

test('npm pack gives an installable, typed package', { timeout: 180000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'redistribute-pack-'));
  try {
    const packed = JSON.parse(npm(['pack', '--json', '--pack-destination', dir], join(root, 'client-wasm', 'pkg')));
    const files = packed[0].files.map((f) => f.path).sort();
    assert.deepEqual(files, [
      'README.md', 'package.json', 'redistribute_client.d.ts', 'redistribute_client.js',
      'redistribute_client_bg.wasm', 'redistribute_client_bg.wasm.d.ts',
    ]);

    const app = join(dir, 'app');
    execFileSync('mkdir', ['-p', app]);
    writeFileSync(join(app, 'package.json'), '{"name":"app","private":true,"type":"module"}');
    npm(['install', '--offline', join(dir, packed[0].filename)], app);

    const installed = join(app, 'node_modules', 'redistribute-client');
    const meta = JSON.parse(readFileSync(join(installed, 'package.json'), 'utf8'));
    assert.equal(meta.name, 'redistribute-client');
    assert.equal(meta.type, 'module');
    assert.equal(meta.engines.node, '>=22');
    const readme = readFileSync(join(installed, 'README.md'), 'utf8');
    assert.ok(!/\]\((?!https?:|#)/.test(readme), 'README links only absolute URLs or its own headings');
    const types = readFileSync(join(installed, meta.types), 'utf8');
    for (const decl of [
      'export class Client', 'constructor(options: ClientOptions)',
      'load(channel: string): Promise<Loaded>',
      'publish(channel: string, fields: Fields, options?: PublishOptions): Promise<string>',
      'on<K extends keyof ClientEvents>(event: K, listener: ClientEvents[K]): void',
      'export type ErrorCode = ServerErrorCode | ClientErrorCode', 'code: ErrorCode',
      'subscribe(channel: string, from?: string | SubscribeOptions | null): Promise<Subscribed>',
      'newSubscription(channel: string, options?: SubscriptionOptions): Subscription',
      'history(channel: string, options?: HistoryOptions): Promise<HistoryPage>',
      'export interface ClientError extends Error',
    ]) {
      assert.ok(types.includes(decl), `types declare ${decl}`);
    }

    const mod = await import(pathToFileURL(join(installed, meta.main)));
    mod.initSync({ module: readFileSync(join(installed, 'redistribute_client_bg.wasm')) });
    const client = new mod.Client({ targets: ['ws://127.0.0.1:9/ws'], localStorage: false });
    assert.deepEqual(await client.load('chat'), { messages: [], lastOffset: undefined });
    await assert.rejects(client.publish('no spaces allowed', { a: 1 }), { code: 'bad_request' });
    assert.throws(() => new mod.Client({ targets: [] }), { code: 'bad_config' });
    client.close();
    await assert.rejects(client.subscribe('chat'), { code: 'closed' });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
