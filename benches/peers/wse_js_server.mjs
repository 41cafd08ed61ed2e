// The reference: JavaScript WSE 4.12.3 (github.com/vovchisko/wse), serving the bench app of
// benches/peers/wse_fast_bench.py: each connection a user of its own named by its connection
// id, an `add` procedure, and a `bench` message that broadcasts `tick` in the burst, paced and
// rate modes. Its code is not part of this repository: `make bench-setup WSE_JS_DIR=DIR`
// installs its dependencies into DIR, a checkout of the 4.12.3 release.
// Usage: WSE_JS_DIR=DIR node wse_js_server.mjs PORT
import { pathToFileURL } from 'node:url'
import { join } from 'node:path'

const root = process.env.WSE_JS_DIR
if (!root) {
  console.error('WSE_JS_DIR is not set: the directory of JavaScript WSE 4.12.3')
  process.exit(2)
}
const { WseServer } = await import(pathToFileURL(join(root, 'src/server.js')).href)

const port = Number(process.argv[2] || 0)
const server = new WseServer({
  port,
  host: '127.0.0.1',
  perMessageDeflate: false,
  // each connection is a user of its own, as in wse_fast_bench.bench_server
  identify: ({ accept, id }) => accept(id),
})
server.register('add', (conn, p) => p.a + p.b)

// asyncio.sleep(0) in the Python bench app: give the loop one turn between broadcasts
const turn = () => new Promise(setImmediate)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

server.channel.on('bench', async (conn, { mode, count, size, rate }) => {
  const payload = 'x'.repeat(size - 2)
  if (mode === 'burst') {
    for (let i = 0; i < count; i++) server.broadcast('tick', payload)
  } else if (mode === 'paced') {
    for (let i = 0; i < count; i++) {
      server.broadcast('tick', payload)
      await turn()
    }
  } else if (mode === 'rate') {
    // a fixed schedule; the payload starts with the send time, CLOCK_MONOTONIC in ns (as
    // Python's time.monotonic_ns(), which the load generator reads), 19 digits
    const interval = 1000 / rate
    const filler = 'x'.repeat(size - 2 - 19)
    let due = performance.now()
    for (let i = 0; i < count; i++) {
      server.broadcast('tick', process.hrtime.bigint().toString().padStart(19, '0') + filler)
      due += interval
      const wait = due - performance.now()
      await (wait > 0 ? sleep(wait) : turn())
    }
  }
})

server.ws.on('listening', () => console.log('READY', server.ws.address().port))
