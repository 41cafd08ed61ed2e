// A WSE client written against the wire protocol only (docs: the WSE protocol page), on the
// npm `ws` package: what a Node.js WSE user's traffic looks like to a wse-fast server.
// Usage: node wse_peer.mjs ws://127.0.0.1:PORT[/PATH]   (the server's whole URL: a mounted server
// lives at a path). Prints one JSON line per observation.
import WebSocket from 'ws'

const url = process.argv[2]
const ws = new WebSocket(url, 'wse-default-json')
const report = (what, value) => console.log(JSON.stringify([what, value]))
const pending = new Map()
let n = 0
const stamp = () => `STAMP${String(++n).padStart(5, '0')}`

function call(name, payload) {
  const s = stamp()
  ws.send(JSON.stringify([name, payload, s]))
  return new Promise((resolve, reject) => pending.set(s, { resolve, reject }))
}

ws.on('open', () => {
  report('protocol', ws.protocol)
  ws.send(JSON.stringify(['~wse:hi', { identity: 'node-user', meta: { device: 'node' } }, null]))
})

ws.on('message', async (data, isBinary) => {
  const [type, payload, s] = JSON.parse(data.toString())
  if (type === '~wse:welcome') {
    report('welcome', payload)
    report('add', await call('add', { a: 20, b: 22 }))
    report('missing', await call('missing', null).catch((e) => e))
    ws.send(JSON.stringify(['hello', { from: 'node' }])) // two elements: stamp omitted
  } else if (type === '~wse:response') {
    pending.get(s).resolve(payload)
  } else if (type === '~wse:response-err') {
    pending.get(s).reject(payload)
  } else if (s) {
    // the server calls us
    ws.send(JSON.stringify(['~wse:response', { node: payload }, s]))
  } else {
    report('message', [type, payload, isBinary])
    if (type === 'bye') ws.close(1000, 'wse.by-client')
  }
})

ws.on('close', (code, reason) => {
  report('close', [code, reason.toString()])
  process.exit(0)
})
ws.on('error', (err) => {
  report('error', String(err))
  process.exit(1)
})
