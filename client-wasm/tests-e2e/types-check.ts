// Compiled by `tsc --noEmit` (scripts/test.sh): the package's types as a TypeScript app uses
// them. The `@ts-expect-error` lines must fail to type-check, so a loosened type fails CI.
import init, { Client, type ClientError, type ErrorCode, type Fields, type Message,
  type PresenceChange, type PresenceMember, type PresenceStats } from '../pkg/redistribute_client.js';

await init();
const client = new Client({ targets: ['ws://127.0.0.1:8080/ws'] });

client.on('messages', (channel: string, messages: Message[]) => {
  const first: Fields = messages[0].fields;
  const text: string | undefined = typeof first.text === 'string' ? first.text : undefined;
  console.log(channel, text);
});
client.on('connect', (target) => target.toUpperCase());
client.on('outbox', (size) => size.toFixed());
client.on('error', (err: ClientError) => {
  const code: ErrorCode = err.code;
  switch (code) {
    case 'gap':
      console.log(err.from, err.to);
      break;
    case 'rate_limited':
    case 'storage_unavailable':
      break;
    default:
      console.log(code);
  }
});
new Client({
  targets: 'ws://127.0.0.1:8080/ws',
  minReconnectDelay: 250,
  maxReconnectDelay: 30000,
  reconnectJitter: 0.5,
  pingInterval: 20000,
});
// @ts-expect-error reconnectJitter is a number
new Client({ targets: 'ws://127.0.0.1:8080/ws', reconnectJitter: 'full' });
const listener = (size: number) => console.log(size);
client.on('outbox', listener);
client.off('outbox', listener);

// @ts-expect-error: `messages` listeners get (channel, messages), not a number
client.on('messages', (n: number) => n);
// @ts-expect-error: no such event
client.on('message', () => {});
// @ts-expect-error: not an error code
const bad: ErrorCode = 'teapot';
// @ts-expect-error: fields are JSON values
await client.publish('chat', { when: new Date() });

const offset: string = await client.publish('chat', { text: 'hi', n: 1, tags: ['a'], nested: { ok: true } });
const sub = await client.subscribe('chat', offset);
const truncated: boolean = sub.truncated;
console.log(bad, truncated);

// Presence: members, counts and join/leave events are typed.
const members: PresenceMember[] = await client.presence('room:1');
const who: string | undefined = members[0]?.user;
const counts: PresenceStats = await client.presenceStats('room:1');
const clients: number = counts.clients;
client.on('presence', (channel: string, change: PresenceChange) => {
  const missed: number | undefined = change.missed;
  console.log(channel, change.joins.length, change.leaves.length, missed);
});
new Client({ targets: 'ws://127.0.0.1:8080/ws', joinLeave: true });
// @ts-expect-error: joinLeave is a boolean
new Client({ targets: 'ws://127.0.0.1:8080/ws', joinLeave: 'yes' });
console.log(who, clients);
client.close();
