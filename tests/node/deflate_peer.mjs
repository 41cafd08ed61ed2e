// A WSE client on the npm `ws` package with permessage-deflate on every message (threshold 0):
// sends a hi and a large echo, checks the echo, and prints what was agreed and how many bytes
// crossed the socket. Usage: node deflate_peer.mjs ws://127.0.0.1:PORT
import WebSocket from 'ws'

const url = process.argv[2]
const ws = new WebSocket(url, 'wse-default-json', { perMessageDeflate: { threshold: 0 } })
const report = (what, value) => console.log(JSON.stringify([what, value]))
const rows = Array.from({ length: 200 }, (_, i) => ({ id: i, symbol: 'MSFT', price: 1.25 * i, side: 'buy' }))

ws.on('open', () => {
  report('extensions', ws.extensions)
  ws.send(JSON.stringify(['~wse:hi', { identity: 'node-user', meta: {} }, null]))
})

ws.on('message', (data) => {
  const [type, payload] = JSON.parse(data.toString())
  if (type === '~wse:welcome') {
    ws.send(JSON.stringify(['echo', rows]))
  } else if (type === 'echo') {
    report('echo', JSON.stringify(payload) === JSON.stringify(rows))
    report('bytesRead', ws._socket.bytesRead)
    report('bytesWritten', ws._socket.bytesWritten)
    ws.close(1000)
  }
})

ws.on('close', () => process.exit(0))
ws.on('error', (err) => {
  report('error', String(err))
  process.exit(1)
})
