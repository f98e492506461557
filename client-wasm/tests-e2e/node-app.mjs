// A Node.js program using the npm package over the network (run by node.test.mjs): no window,
// localStorage or Web Locks, so the client has its own socket and caches in the process's
// memory. Prints one JSON line per step; exits non-zero on failure.
//
//   node node-app.mjs <package dir> <ws url> <channel>
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [pkg, url, channel] = process.argv.slice(2);
const mod = await import(pathToFileURL(join(pkg, 'redistribute_client.js')));
mod.initSync({ module: readFileSync(join(pkg, 'redistribute_client_bg.wasm')) });

const say = (step, data = {}) => console.log(JSON.stringify({ step, ...data }));
const within = (ms, what, promise) => Promise.race([
  promise,
  new Promise((_, fail) => setTimeout(() => fail(new Error(`timed out: ${what}`)), ms)),
]);

const client = new mod.Client({ targets: [url], requestTimeout: 15000 });
const received = [];
let wake = () => {};
client.on('messages', (ch, messages) => {
  if (ch === channel) received.push(...messages);
  wake();
});
const errors = [];
client.on('error', (e) => errors.push(e.code));
const until = (what, check) => within(30000, what, new Promise((ok) => {
  const poll = () => (check() ? ok() : (wake = poll));
  poll();
}));

const sub = await within(15000, 'subscribe', client.subscribe(channel, '0'));
say('subscribed', { node: process.versions.node, offset: sub.offset, role: client.role });
const first = await within(15000, 'publish', client.publish(channel, { n: 1, text: 'from node' }));
await until('own message', () => received.some((m) => m.offset === first));
say('round-trip', { offset: first, fields: received.find((m) => m.offset === first).fields });
// The in-memory cache, shared by the clients of the process like localStorage by a page's.
const other = new mod.Client({ targets: [url], shareSocket: false });
const cached = await other.load(channel);
other.close();
say('cached', { offsets: cached.messages.map((m) => m.offset), lastOffset: cached.lastOffset });

// The test restarts the server now; the client reconnects and resumes from its last offset.
say('restart-now');
await within(60000, 'go', new Promise((ok) => process.stdin.once('data', ok)));
const second = await within(30000, 'publish after restart', client.publish(channel, { n: 2 }));
await until('message after restart', () => received.some((m) => m.offset === second));
say('resumed', {
  offsets: received.map((m) => m.offset),
  errors,
});
client.close();
process.exit(0);
