// node-redis' client-side cache (RESP3, CLIENT TRACKING) through the proxy:
// a repeated read is served from the client's cache, and a write straight
// to a shard invalidates it.
//   node client_side_cache.mjs PROXY_PORT SHARD_PORT [SHARD_PORT ...]
import { createClient } from 'redis';

const [proxyPort, ...shardPorts] = process.argv.slice(2);
const c = createClient({
  url: `redis://127.0.0.1:${proxyPort}`,
  RESP: 3,
  clientSideCache: { ttl: 0, maxEntries: 0 },
});
const shards = shardPorts.map((p) => createClient({ url: `redis://127.0.0.1:${p}` }));
await c.connect();
for (const s of shards) await s.connect();
// Straight to every shard primary: the key lives on one of them.
const writeDirect = async (k, v) => { for (const s of shards) await s.set(k, v); };

const fail = (why) => { console.log(`FAIL: ${why}`); process.exit(1); };
for (let i = 0; i < 20; i++) {
  const key = `csc:${i}`;
  await writeDirect(key, 'v1');
  const first = await c.get(key);
  const before = c.clientSideCache.stats().hitCount;
  const second = await c.get(key);
  if (first !== 'v1' || second !== 'v1') fail(`${key}: read ${first}, ${second}`);
  if (c.clientSideCache.stats().hitCount !== before + 1) fail(`${key}: second read not from the cache`);
  await writeDirect(key, 'v2');
  // The invalidation arrives on its own; wait for it (bounded).
  let now;
  for (let t = 0; t < 100; t++) {
    now = await c.get(key);
    if (now === 'v2') break;
    await new Promise((r) => setTimeout(r, 20));
  }
  if (now !== 'v2') fail(`${key}: still ${now} in the client's cache after a write`);
}
console.log(JSON.stringify(c.clientSideCache.stats()));
await c.quit();
for (const s of shards) await s.quit();
console.log('OK');
