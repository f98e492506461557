// Serves the chat page and the built package: `node examples/chat/serve.mjs [--port 8000]`
// (port 0 picks a free one), then open the printed URL. Only examples/chat/ and
// client-wasm/pkg/ are served; nothing else of the repository.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const allowed = ['/examples/chat/', '/client-wasm/pkg/'];
const types = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
  '.ts': 'text/plain; charset=utf-8',
  '.md': 'text/plain; charset=utf-8',
};

/** Starts the server on `port` (0: any free port); resolves with the http.Server. */
export function serve(port = 0, host = '127.0.0.1') {
  const server = createServer(async (req, res) => {
    let path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname));
    if (path === '/') path = '/examples/chat/';
    if (path.endsWith('/')) path += 'index.html';
    if (!allowed.some((p) => path.startsWith(p))) {
      res.writeHead(404).end('not found');
      return;
    }
    try {
      const body = await readFile(join(root, path));
      res.writeHead(200, {
        'content-type': types[extname(path)] ?? 'application/octet-stream',
        'cache-control': 'no-store',
      });
      res.end(body);
    } catch {
      res.writeHead(404).end('not found');
    }
  });
  return new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(port, host, () => ok(server));
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf('--port');
  const port = i > 0 ? Number(process.argv[i + 1]) : 8000;
  const server = await serve(port);
  const { port: actual } = server.address();
  console.log(`chat page: http://127.0.0.1:${actual}/examples/chat/?targets=ws://127.0.0.1:8080/ws`);
}
