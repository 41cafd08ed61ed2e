// The hold mode (-hold) of benches/scale.py: many idle authenticated connections, and the
// time one broadcast takes to reach all of them.
//
// It opens -conns WSE connections, -parallel at a time, connection i from the source address
// -sources[i % len] (bound before the connect: every address of 127.0.0.0/8 has ports of its
// own, and a server counts strangers per address), each authenticated as in the RPC mode, and
// prints {"connected", "failed", "lost", "connect_wall", "first_error"} (lost: welcomed, then
// ended). From its welcome on, every connection only reads (gorilla answers the server's
// pings there), and stdin drives the process, a command a line:
//
//	arm              forget the receipts so far; prints {"armed": true}
//	trigger MESSAGE  writes MESSAGE (one WSE message, JSON) on the first connection
//	report SECONDS   waits until every connection has received a message of type "tick"
//	                 since arm, or SECONDS; prints the receipts (below)
//
// A tick's payload starts with 19 digits, the CLOCK_MONOTONIC nanoseconds at which the
// server broadcast it (benches/peers/wse_scale_app.py, or the floor of floor.go); a receipt's
// time is read from the same clock, so first_ms, p50_ms, p99_ms and last_ms are milliseconds
// from the broadcast to the receipts of this process, on one machine's one clock
// (quantiles_ms: at 0, 1, ... 100 %).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/gorilla/websocket"
)

var tickHead = []byte(`["tick","`)

// monotonicBase pairs a CLOCK_MONOTONIC reading with Go's own (which reads the same clock),
// so that a time.Time converts to the nanoseconds Python's time.monotonic_ns() gives.
type monotonicBase struct {
	ns int64
	at time.Time
}

func newMonotonicBase() monotonicBase {
	var ts syscall.Timespec
	const clockMonotonic = 1 // <time.h>
	if _, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockMonotonic,
		uintptr(unsafe.Pointer(&ts)), 0); errno != 0 {
		panic(errno)
	}
	return monotonicBase{ns: ts.Nano(), at: time.Now()}
}

func (b monotonicBase) of(t time.Time) int64 { return b.ns + int64(t.Sub(b.at)) }

// holder is what the connections of one hold process share.
type holder struct {
	clock     monotonicBase
	mu        sync.Mutex
	delays    []int64 // ns from a tick's broadcast to its receipt, since arm
	receivers map[int]bool
	lost      atomic.Int64  // connections the server or the kernel ended
	all       chan struct{} // closed when every connection received a tick since arm
	conns     int
}

func (h *holder) arm() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.delays, h.receivers, h.all = nil, map[int]bool{}, make(chan struct{})
}

// received records a tick on connection i, read at receivedAt.
func (h *holder) received(i int, message []byte, receivedAt time.Time) {
	sentNs, err := strconv.ParseInt(string(message[len(tickHead):len(tickHead)+19]), 10, 64)
	if err != nil {
		fmt.Fprintf(os.Stderr, "loadgen_go: a tick without its time: %q\n", message)
		os.Exit(1)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.delays = append(h.delays, h.clock.of(receivedAt)-sentNs)
	if !h.receivers[i] {
		h.receivers[i] = true
		if len(h.receivers) == h.conns { // once: the receivers only grow until the next arm
			close(h.all)
		}
	}
}

// read is connection i's life after its welcome: ticks are recorded, pings answered (by
// gorilla's default handler, inside ReadMessage), anything else ignored.
func (h *holder) read(i int, ws *websocket.Conn) {
	for {
		_, message, err := ws.ReadMessage()
		if err != nil {
			h.lost.Add(1)
			return
		}
		now := time.Now()
		if len(message) >= len(tickHead)+19 && bytes.HasPrefix(message, tickHead) {
			h.received(i, message, now)
		}
	}
}

// report waits for every connection's tick or the timeout, then gives the receipts.
func (h *holder) report(timeout time.Duration) map[string]any {
	h.mu.Lock()
	all := h.all
	h.mu.Unlock()
	select {
	case <-all:
	case <-time.After(timeout):
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	delays := append([]int64(nil), h.delays...)
	sort.Slice(delays, func(a, b int) bool { return delays[a] < delays[b] })
	ms := func(q float64) float64 {
		if len(delays) == 0 {
			return 0
		}
		return float64(delays[int(q*float64(len(delays)-1))]) / 1e6
	}
	quantiles := make([]float64, 101)
	for i := range quantiles {
		quantiles[i] = ms(float64(i) / 100)
	}
	return map[string]any{
		"receipts": len(delays), "receivers": len(h.receivers), "lost": h.lost.Load(),
		"first_ms": ms(0), "p50_ms": ms(0.5), "p99_ms": ms(0.99), "last_ms": ms(1),
		"quantiles_ms": quantiles,
	}
}

func printJSON(value any) {
	out, err := json.Marshal(value)
	if err != nil {
		panic(err)
	}
	fmt.Println(string(out))
}

// dialFrom is dial with the connection's source address bound, and buffers kept small: a
// connection that only waits holds gorilla's 512-byte read buffer and no write buffer (a
// pool lends one for each write).
func dialFrom(address string, source net.IP, writeBuffers *sync.Pool) (*websocket.Conn, error) {
	netDialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: source}, Timeout: 60 * time.Second}
	dialer := websocket.Dialer{
		Subprotocols: []string{subprotocol}, HandshakeTimeout: 60 * time.Second,
		NetDialContext: netDialer.DialContext, ReadBufferSize: 512, WriteBufferPool: writeBuffers,
	}
	return authenticate(&dialer, address)
}

func hold(host string, port int, path string, conns int, parallel int, sources string) {
	var ips []net.IP
	for _, s := range strings.Split(sources, ",") {
		ip := net.ParseIP(s)
		if ip == nil {
			fmt.Fprintf(os.Stderr, "loadgen_go: %q is not an address\n", s)
			os.Exit(2)
		}
		ips = append(ips, ip)
	}
	address := (&url.URL{Scheme: "ws", Host: fmt.Sprintf("%s:%d", host, port), Path: path}).String()
	h := &holder{clock: newMonotonicBase()}
	h.arm()

	held := make([]*websocket.Conn, conns)
	var failed atomic.Int64
	var firstError atomic.Value
	writeBuffers := &sync.Pool{}
	start := time.Now()
	var opening sync.WaitGroup
	slots := make(chan struct{}, parallel)
	for i := range held {
		opening.Add(1)
		slots <- struct{}{}
		go func(i int) {
			defer func() { <-slots; opening.Done() }()
			ws, err := dialFrom(address, ips[i%len(ips)], writeBuffers)
			if err != nil {
				failed.Add(1)
				firstError.CompareAndSwap(nil, fmt.Sprintf("connection %d: %v", i, err))
				return
			}
			held[i] = ws
			// reading from the welcome on: the server's pings are answered during the ramp
			go h.read(i, ws)
		}(i)
	}
	opening.Wait()
	connectWall := time.Since(start).Seconds()
	connected := 0
	for _, ws := range held {
		if ws != nil {
			connected++
		}
	}
	h.mu.Lock()
	h.conns = connected
	h.mu.Unlock()
	first, _ := firstError.Load().(string)
	printJSON(map[string]any{
		"connected": connected, "failed": failed.Load(), "lost": h.lost.Load(),
		"connect_wall": connectWall, "first_error": first,
	})

	commands := bufio.NewScanner(os.Stdin)
	commands.Buffer(make([]byte, 64*1024), 64*1024)
	for commands.Scan() {
		command, argument, _ := strings.Cut(commands.Text(), " ")
		switch command {
		case "arm":
			h.arm()
			printJSON(map[string]any{"armed": true})
		case "trigger":
			// the first connection that is open; its writes are this goroutine's only
			for _, ws := range held {
				if ws != nil {
					if err := ws.WriteMessage(websocket.TextMessage, []byte(argument)); err != nil {
						fmt.Fprintln(os.Stderr, "loadgen_go: trigger:", err)
						os.Exit(1)
					}
					break
				}
			}
		case "report":
			seconds, err := strconv.ParseFloat(argument, 64)
			if err != nil {
				fmt.Fprintln(os.Stderr, "loadgen_go: report SECONDS:", err)
				os.Exit(2)
			}
			printJSON(h.report(time.Duration(seconds * float64(time.Second))))
		default:
			fmt.Fprintf(os.Stderr, "loadgen_go: unknown command %q\n", command)
			os.Exit(2)
		}
	}
	// stdin closed: the benchmark is done with these connections; the kernel closes them
}
