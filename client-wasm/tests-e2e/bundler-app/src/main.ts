// Subscribes, publishes and shows its own message coming back, with the package as an app
// bundles it: `import init` from the bare name, the .wasm found by the bundler.
import init, { Client, type Message } from 'redistribute-client';

declare global {
  interface Window { result?: { offset: string; received: Message[]; role: string } | { error: string } }
}

const log = (line: string) => { document.getElementById('log')!.textContent += `${line}\n`; };

async function main() {
  await init();
  const ws = new URLSearchParams(location.search).get('ws')!;
  const client = new Client({ targets: [ws] });
  const received: Message[] = [];
  client.on('messages', (channel, messages) => {
    if (channel === 'bundled') received.push(...messages);
    log(`${channel}: ${messages.length} message(s)`);
  });
  await client.subscribe('bundled', '0');
  const offset = await client.publish('bundled', { text: 'from a bundle' });
  const deadline = Date.now() + 20000;
  while (!received.some((m) => m.offset === offset) && Date.now() < deadline) {
    await new Promise((ok) => setTimeout(ok, 50));
  }
  window.result = { offset, received, role: client.role };
}

main().catch((e) => { window.result = { error: `${e.code ?? ''} ${e.message}` }; });
