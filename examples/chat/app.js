// The chat page's logic: history from localStorage first (`load`), then `subscribe` from the
// cached offset, so a reload shows history at once and continues with no gap and no duplicate.
import init, { Client } from 'redistribute-client';

const params = new URLSearchParams(location.search);
const targets = (params.get('targets') || 'ws://127.0.0.1:8080/ws').split(',');
const channel = params.get('channel') || 'chat';
const name = params.get('name') || `guest-${Math.floor(Math.random() * 1e4)}`;

const $ = (id) => document.getElementById(id);
const list = $('messages');
const status = $('status');
$('channel').textContent = channel;

// What happened, in order, with performance.now() stamps (read by the browser test).
const events = [];
const note = (type, detail) => events.push({ type, detail, t: performance.now() });

function setStatus(text) {
  status.textContent = text;
  status.className = text;
}

function show(message, kind) {
  const li = document.createElement('li');
  li.className = kind;
  li.dataset.offset = message.offset;
  const who = document.createElement('span');
  who.className = 'name';
  who.textContent = message.fields.name ?? '?';
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = message.fields.text ?? JSON.stringify(message.fields);
  const offset = document.createElement('span');
  offset.className = 'offset';
  offset.textContent = message.offset;
  li.append(offset, who, text);
  list.append(li);
  li.scrollIntoView({ block: 'nearest' });
}

await init();
const client = new Client({ targets, localStorage: true });
window.chat = { client, channel, name, events };

client.on('connect', (target) => { note('connect', target); setStatus('connected'); });
client.on('disconnect', (reason) => { note('disconnect', reason); setStatus('disconnected'); });
client.on('error', (err) => {
  note('error', err.code);
  if (err.code === 'connect_failed') setStatus('disconnected');
  const li = document.createElement('li');
  li.dataset.code = err.code;
  li.textContent = `${err.code}: ${err.message}`;
  $('errors').prepend(li);
  while ($('errors').children.length > 20) $('errors').lastChild.remove();
});
let last; // the offset of the last message shown
// Tabs share one socket: show this tab's part, and what waits in the offline outbox.
client.on('leader', () => { note('role', 'leader'); document.body.dataset.role = 'leader'; });
client.on('follower', () => { note('role', 'follower'); document.body.dataset.role = 'follower'; });
client.on('outbox', (size) => { note('outbox', size); document.body.dataset.outbox = size; });
client.on('messages', (ch, messages) => {
  if (ch !== channel) return;
  note('messages', messages.length);
  for (const m of messages) show(m, 'live');
  last = messages[messages.length - 1].offset;
});

// History from localStorage, without the network; then continue after it.
const { messages, lastOffset } = await client.load(channel);
for (const m of messages) show(m, 'restored');
note('restored', messages.length);
last = lastOffset;

// A subscribe waits for a connection up to the request timeout; while the server stays down,
// ask again (once subscribed, the client itself resumes after every reconnect).
for (;;) {
  try {
    await client.subscribe(channel, last ?? '0');
    note('subscribed', last ?? '0');
    break;
  } catch (err) {
    if (err.code !== 'timeout') throw err;
  }
}

$('send').addEventListener('submit', async (e) => {
  e.preventDefault();
  const input = $('text');
  const text = input.value;
  input.value = '';
  try {
    await client.publish(channel, { name, text });
  } catch (err) {
    input.value = text; // not stored: let the user retry
  }
});
