// Node.js with the npm ws package (the transport of JavaScript WSE) answering the `add`
// procedure with JSON.parse and JSON.stringify and no framework: what JavaScript pays per call
// below WSE itself. Usage: node node_ws_rpc_server.mjs PORT
import { createRequire } from 'node:module'
const require = createRequire(new URL('../../tests/node/package.json', import.meta.url))
const { WebSocketServer } = require('ws')

const port = Number(process.argv[2] || 0)
const WELCOME = '["~wse:welcome",null,null]'
const wss = new WebSocketServer({ port, host: '127.0.0.1', perMessageDeflate: false,
  handleProtocols: (protocols) => (protocols.has('wse-default-json') ? 'wse-default-json' : false) })

wss.on('connection', (ws) => {
  ws.on('message', (data) => {
    const [kind, payload, stamp] = JSON.parse(data.toString())
    if (kind === 'add') ws.send(JSON.stringify(['~wse:response', payload.a + payload.b, stamp]))
    else if (kind === '~wse:hi') ws.send(WELCOME)
  })
})
wss.on('listening', () => console.log('READY', wss.address().port))
