// Drives kai with memjs, Node's binary-protocol memcached client (npm), with SASL when given.
// Usage: node memjs_check.js HOST:PORT[,HOST:PORT...] [USER PASSWORD]
// Exits non-zero with the failed check.
const memjs = require('memjs');
const assert = require('assert');

const servers = process.argv[2].split(',');
const auth = process.argv.length === 5 ? { username: process.argv[3], password: process.argv[4] } : {};
const clients = servers.map((s) => memjs.Client.create(s, { timeout: 5, retries: 0, ...auth }));
const first = clients[0];
const last = clients[clients.length - 1];

async function main() {
  await first.flush();
  assert.strictEqual(await first.set('plain', 'value', {}), true);
  for (const c of clients) {
    assert.strictEqual((await c.get('plain')).value.toString(), 'value');
  }
  const blob = Buffer.alloc(10240, 7);
  await first.set('blob', blob, {});
  assert.ok((await last.get('blob')).value.equals(blob));
  const keys = [...Array(30).keys()].map((i) => `many${i}`);
  for (const [i, k] of keys.entries()) await first.set(k, `v${i}`, {});
  for (const [i, k] of keys.entries()) {
    assert.strictEqual((await last.get(k)).value.toString(), `v${i}`);
  }
  assert.strictEqual(await first.add('plain', 'x', {}), false);
  assert.strictEqual(await first.add('fresh', 'x', {}), true);
  assert.strictEqual(await first.replace('missing', 'x', {}), false);
  assert.strictEqual(await first.append('plain', '-tail'), true);
  // (memjs 1.3.2 sends an Append for prepend(), to memcached too: not checked.)
  assert.strictEqual((await last.get('plain')).value.toString(), 'value-tail');
  assert.strictEqual(await first.delete('fresh'), true);
  assert.strictEqual(await first.delete('fresh'), false);
  assert.strictEqual((await last.get('fresh')).value, null);
  assert.strictEqual((await first.increment('counter', 1, { initial: 10 })).value, 10);
  assert.strictEqual((await first.increment('counter', 5, {})).value, 15);
  assert.strictEqual((await last.decrement('counter', 20, {})).value, 0);
  assert.strictEqual(await first.touch('plain', 3600), true);
  assert.strictEqual(await first.touch('absent', 3600), false);
  const got = await first.get('plain');
  assert.ok(got.flags !== undefined);
  const stats = await new Promise((resolve, reject) => {
    first.stats((err, server, values) => (err ? reject(err) : resolve(values)));
  });
  assert.ok('curr_items' in stats, JSON.stringify(stats));
  clients.forEach((c) => c.close());
  console.log('memjs: all checks passed');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
