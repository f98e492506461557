// Compiled by `tsc --noEmit` (scripts/test.sh): the package's types as a TypeScript app uses
// them. The `@ts-expect-error` lines must fail to type-check, so a loosened type fails CI.
import init, {
  Client, Subscription, type ClientError, type ClientState, type ErrorCode, type Fields, type HistoryPage,
  type Message, type PresenceChange, type PresenceMember, type PresenceStats, type Subscribed,
  type SubscriptionState,
} from '../pkg/redistribute_client.js';

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
await client.subscribe('prices', { rewind: 1 });
await client.subscribe('prices', { offset: null, rewind: 5 });
await client.subscribe('chat');
const page: HistoryPage = await client.history('chat', { from: '0', limit: 10, reverse: true });
const more: boolean = page.more;
const next: string = page.next;
const first: string | undefined = page.messages[0]?.offset;
console.log(more, next, first, page.gap?.from);
// @ts-expect-error: limit is a number
await client.history('chat', { limit: '10' });
console.log(bad, truncated);

// Subscription objects and states.
const chat: Subscription = client.newSubscription('chat', { offset: '$' });
const same: Subscription | undefined = client.getSubscription('chat');
chat.on('state', (state: SubscriptionState) => state === 'subscribing');
chat.on('subscribed', (ctx: Subscribed) => ctx.recovered && ctx.truncated);
chat.on('messages', (messages: Message[]) => messages.length);
chat.on('gap', (err: ClientError) => err.from);
chat.on('error', (err: ClientError) => err.code);
chat.on('unsubscribed', (err?: ClientError) => err?.code);
const started: Subscribed = await chat.subscribe();
const recovered: boolean = started.recovered;
const stored: string = await chat.publish({ text: 'hi' });
const chatPage: HistoryPage = await chat.history({ limit: 1, reverse: true });
const left: boolean = await chat.unsubscribe();
const subState: SubscriptionState = chat.state;
const clientState: ClientState = client.state;
client.on('state', (state: ClientState) => state === 'closed');
client.removeSubscription(chat);
console.log(same, recovered, stored, chatPage.more, left, subState, clientState, chat.channel);
// @ts-expect-error: not a subscription state
const wrong: SubscriptionState = 'joined';
// @ts-expect-error: `messages` listeners of a subscription get the messages only
chat.on('messages', (channel: string, messages: Message[]) => messages);
// @ts-expect-error: no such subscription event
chat.on('message', () => {});
// @ts-expect-error: the offset is a string
client.newSubscription('chat', { offset: 5 });
console.log(wrong);
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
