// Node.js with the npm ws package (the transport of JavaScript WSE), fanning out the same
// frames. Usage: node node_ws_server.mjs PORT
import { createRequire } from 'node:module'
const require = createRequire(new URL('../../tests/node/package.json', import.meta.url))
const { WebSocketServer } = require('ws')

const port = Number(process.argv[2] || 0)
const WELCOME = '["~wse:welcome",null,null]'
const clients = new Set()
const wss = new WebSocketServer({ port, host: '127.0.0.1', perMessageDeflate: false,
  handleProtocols: (protocols) => (protocols.has('wse-default-json') ? 'wse-default-json' : false) })

function fanout(mode, count, size) {
  const message = '["tick","' + 'x'.repeat(size - 2) + '",null]'
  let left = count
  const round = () => {
    for (const ws of clients) ws.send(message)
    left -= 1
    if (left > 0) (mode === 'paced' ? setImmediate(round) : round())
  }
  if (mode === 'paced') round()
  else { while (left > 0) { for (const ws of clients) ws.send(message); left -= 1 } }
}

wss.on('connection', (ws) => {
  ws.on('message', (data) => {
    const [kind, payload] = JSON.parse(data.toString())
    if (kind === '~wse:hi') { clients.add(ws); ws.send(WELCOME) }
    else if (kind === 'bench') fanout(payload.mode, payload.count, payload.size)
  })
  ws.on('close', () => clients.delete(ws))
})
wss.on('listening', () => console.log('READY', wss.address().port))
