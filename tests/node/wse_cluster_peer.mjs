// A WSE client on the npm `ws` package, written against the wire protocol only, that stays
// connected to one node of a cluster while the test sends to it from the other nodes.
// Usage: node wse_cluster_peer.mjs ws://127.0.0.1:PORT IDENTITY ENDS
// It answers every call from the server with {node: payload}, and closes (1000) once it has
// received ENDS messages of type `end`. Prints one JSON line per observation.
import WebSocket from 'ws'

const [url, identity, ends] = process.argv.slice(2)
const ws = new WebSocket(url, 'wse-default-json')
const report = (what, value) => console.log(JSON.stringify([what, value]))
let endsSeen = 0

ws.on('open', () => {
  ws.send(JSON.stringify(['~wse:hi', { identity, meta: { device: 'node' } }, null]))
})

ws.on('message', (data) => {
  const [type, payload, stamp] = JSON.parse(data.toString())
  if (type === '~wse:welcome') {
    report('welcome', payload)
  } else if (stamp) {
    // the server calls us
    report('called', [type, payload])
    ws.send(JSON.stringify(['~wse:response', { node: payload }, stamp]))
  } else {
    report('message', [type, payload])
    if (type === 'end' && ++endsSeen === Number(ends)) ws.close(1000, 'wse.by-client')
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
