// A second load generator for the RPC benchmark, compiled and independent of the Python one
// (benches/loadgen.py) and of the servers it measures: gorilla/websocket for the handshake
// and the framing, Go's runtime for the scheduling.
//
// It opens -conns WSE connections (subprotocol wse-default-json, authenticated with
// ["~wse:hi",{"identity":"bench","meta":{}},null] and answered by the welcome), then keeps
// -depth calls of `add` in flight on each for -seconds: every call its own WebSocket message
// in its own write, with a stamp of ten digits unique across the run, and a new call written
// as each answer arrives. The answers are counted where they are received, each matched to
// its call by stamp; one that is not ["~wse:response",3,STAMP] for a call in flight fails the
// run. After the window it waits until every call in flight is answered (none lost), and
// prints one JSON object: the calls answered, the wall time of the window (drain included),
// the CPU seconds the server's processes (-server-pids, from the scheduler's per-thread
// counters) and this process spent over it, and the p50/p99 from write to answer.
//
// With -pipelined, a connection's calls are written together instead, as benches/loadgen.py's
// pipelined caller writes them: the first -depth calls in one write, then after each read as
// many calls as the read brought whole answers, in one write (frames built here, written to
// the socket under gorilla; answers read from it directly, in order, stamps checked).
//
// Usage: loadgen_go -port PORT -conns 100 -depth 8 -seconds 2 -server-pids PID[,PID...]
//
// Two more modes serve benches/scale.py: -hold (hold.go), idle connections and the time of
// one broadcast to all of them, and -floor (floor.go), the bare server that broadcast's floor
// is measured against.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

const (
	subprotocol = "wse-default-json"
	stampSize   = 10 // as long as the reference's random stamps
)

var (
	hi          = []byte(`["~wse:hi",{"identity":"bench","meta":{}},null]`)
	welcome     = []byte(`["~wse:welcome",null,null]`)
	callPrefix  = []byte(`["add",{"a":1,"b":2},"`)
	answerHead  = []byte(`["~wse:response",3,"`)
	stampSuffix = []byte(`"]`)
)

// Result is what run.py reads: the names of benches/loadgen.py's RpcResult.
type Result struct {
	Loadgen     string  `json:"loadgen"`
	Conns       int     `json:"conns"`
	Depth       int     `json:"depth"`
	Deliveries  int64   `json:"deliveries"`
	Wall        float64 `json:"wall"`
	CPU         float64 `json:"cpu"`
	LoadgenCPU  float64 `json:"loadgen_cpu"`
	P50Ms       float64 `json:"p50_ms"`
	P99Ms       float64 `json:"p99_ms"`
	ConnectWall float64 `json:"connect_wall"`
}

// cpuSeconds sums the CPU time of every thread of a process so far (nanoseconds, the first
// field of each thread's schedstat), as benches/wire.py's cpu_seconds does.
func cpuSeconds(pid string) float64 {
	tasks, _ := filepath.Glob("/proc/" + pid + "/task/*/schedstat")
	var total int64
	for _, task := range tasks {
		data, err := os.ReadFile(task)
		if err != nil {
			continue // a thread that ended meanwhile
		}
		fields := strings.Fields(string(data))
		if len(fields) > 0 {
			ns, _ := strconv.ParseInt(fields[0], 10, 64)
			total += ns
		}
	}
	return float64(total) / 1e9
}

// run holds what every connection of one run shares.
type run struct {
	nextStamp atomic.Int64
	running   atomic.Bool
	answered  atomic.Int64
	epoch     time.Time // sample times are offsets from it (monotonic)
	failure   chan error
}

func (r *run) fail(err error) {
	select {
	case r.failure <- err:
	default: // the first failure is the one reported
	}
}

// caller is one connection keeping depth calls in flight.
type caller struct {
	run     *run
	ws      *websocket.Conn
	depth   int
	sent    map[string]time.Duration // stamp -> when written
	samples []time.Duration
	call    []byte
	out     []byte // the calls of one pipelined write
}

func dial(address string) (*websocket.Conn, error) {
	dialer := websocket.Dialer{Subprotocols: []string{subprotocol}, HandshakeTimeout: 30 * time.Second}
	return authenticate(&dialer, address)
}

// authenticate opens a WSE connection with dialer: the upgrade, the hi and its welcome.
func authenticate(dialer *websocket.Dialer, address string) (*websocket.Conn, error) {
	ws, _, err := dialer.Dial(address, nil)
	if err != nil {
		return nil, err
	}
	if ws.Subprotocol() != subprotocol {
		ws.Close()
		return nil, fmt.Errorf("subprotocol %q negotiated, not %s", ws.Subprotocol(), subprotocol)
	}
	if err := ws.WriteMessage(websocket.TextMessage, hi); err != nil {
		ws.Close()
		return nil, err
	}
	ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	kind, message, err := ws.ReadMessage()
	if err != nil {
		ws.Close()
		return nil, fmt.Errorf("no welcome: %w", err)
	}
	if kind != websocket.TextMessage || !bytes.Equal(message, welcome) {
		ws.Close()
		return nil, fmt.Errorf("unexpected greeting %q", message)
	}
	ws.SetReadDeadline(time.Time{})
	return ws, nil
}

// write sends one call, a message of its own (gorilla flushes each message in one write).
func (c *caller) write() error {
	stamp := fmt.Sprintf("%0*d", stampSize, c.run.nextStamp.Add(1)-1)
	c.call = append(append(append(c.call[:0], callPrefix...), stamp...), stampSuffix...)
	c.sent[stamp] = time.Since(c.run.epoch)
	return c.ws.WriteMessage(websocket.TextMessage, c.call)
}

// loop writes depth calls, then one more per answer while the run lasts; it returns once no
// call of this connection is in flight after the window.
func (c *caller) loop(start <-chan struct{}) error {
	<-start
	for i := 0; i < c.depth; i++ {
		if err := c.write(); err != nil {
			return err
		}
	}
	answerSize := len(answerHead) + stampSize + len(stampSuffix)
	for len(c.sent) > 0 {
		kind, message, err := c.ws.ReadMessage()
		if err != nil {
			return fmt.Errorf("%d calls in flight lost: %w", len(c.sent), err)
		}
		now := time.Since(c.run.epoch)
		if kind != websocket.TextMessage || len(message) != answerSize {
			return fmt.Errorf("unexpected answer %q", message)
		}
		if err := c.settle(message, now); err != nil {
			return err
		}
		c.run.answered.Add(1)
		if c.run.running.Load() {
			if err := c.write(); err != nil {
				return err
			}
		}
		// Fairness between connections: a goroutine whose next answer has already arrived
		// would read on without parking, and with the one core the load generator has, Go
		// polls the other sockets only when no goroutine is runnable (or every 10 ms): a few
		// connections would be served back to back while the rest wait (seen at 100 x 8
		// against wse-fast: p50 0.05 ms, p99 56 ms; with the yield, 5.1 ms and 7.7 ms).
		runtime.Gosched()
	}
	return nil
}

// appendCall appends one call as a client's masked text frame (RFC 6455 section 5.3); the
// body is shorter than 126 bytes, so its length fits the second byte.
// settle checks one answer's text (the answer to "add" with a stamp of ours), ends the call
// in flight under its stamp and records its latency; an answer of another shape, or to no
// call in flight, is an error that fails the run.
func (c *caller) settle(message []byte, now time.Duration) error {
	if !bytes.HasPrefix(message, answerHead) || !bytes.HasSuffix(message, stampSuffix) {
		return fmt.Errorf("unexpected answer %q", message)
	}
	stamp := string(message[len(answerHead) : len(answerHead)+stampSize])
	sentAt, ok := c.sent[stamp]
	if !ok {
		return fmt.Errorf("answer to a call not in flight %q", message)
	}
	delete(c.sent, stamp)
	c.samples = append(c.samples, now-sentAt)
	return nil
}

func (c *caller) appendCall(now time.Duration) {
	stamp := fmt.Sprintf("%0*d", stampSize, c.run.nextStamp.Add(1)-1)
	c.sent[stamp] = now
	body := append(append(append(c.call[:0], callPrefix...), stamp...), stampSuffix...)
	key := rand.Uint32()
	mask := [4]byte{byte(key >> 24), byte(key >> 16), byte(key >> 8), byte(key)}
	c.out = append(c.out, 0x81, 0x80|byte(len(body)), mask[0], mask[1], mask[2], mask[3])
	for i, b := range body {
		c.out = append(c.out, b^mask[i%4])
	}
	c.call = body
}

// pipelinedLoop is loop with a connection's calls written together: the first depth at once,
// then as many as each read brought answers.
func (c *caller) pipelinedLoop(start <-chan struct{}) error {
	// the server sent nothing after the welcome: gorilla's reader holds no byte of an answer
	conn := c.ws.NetConn()
	<-start
	c.out = c.out[:0]
	now := time.Since(c.run.epoch)
	for i := 0; i < c.depth; i++ {
		c.appendCall(now)
	}
	if _, err := conn.Write(c.out); err != nil {
		return err
	}
	answerSize := len(answerHead) + stampSize + len(stampSuffix)
	frameSize := 2 + answerSize // an unmasked server frame, its length in the second byte
	buf := make([]byte, 64*1024)
	var pending []byte
	for len(c.sent) > 0 {
		n, err := conn.Read(buf)
		if err != nil {
			return fmt.Errorf("%d calls in flight lost: %w", len(c.sent), err)
		}
		now := time.Since(c.run.epoch)
		pending = append(pending, buf[:n]...)
		answered := 0
		for len(pending) >= frameSize {
			frame := pending[:frameSize]
			message := frame[2:]
			if frame[0] != 0x81 || int(frame[1]) != answerSize {
				return fmt.Errorf("unexpected answer %q", frame)
			}
			if err := c.settle(message, now); err != nil {
				return err
			}
			answered++
			pending = pending[frameSize:]
		}
		c.run.answered.Add(int64(answered))
		if answered > 0 && c.run.running.Load() {
			c.out = c.out[:0]
			for i := 0; i < answered; i++ {
				c.appendCall(now)
			}
			if _, err := conn.Write(c.out); err != nil {
				return err
			}
		}
		runtime.Gosched() // fairness between connections, as in loop
	}
	return nil
}

// p50 and p99 in milliseconds, picked as run.py picks them from the Python one's samples.
func p50p99(sorted []time.Duration) (float64, float64) {
	if len(sorted) == 0 {
		return 0, 0
	}
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	return ms(sorted[len(sorted)/2]), ms(sorted[int(0.99*float64(len(sorted)-1))])
}

func main() {
	host := flag.String("host", "127.0.0.1", "the server's address")
	port := flag.Int("port", 0, "the server's port")
	path := flag.String("path", "/", "the WebSocket endpoint's path")
	conns := flag.Int("conns", 100, "connections")
	depth := flag.Int("depth", 8, "calls in flight per connection")
	seconds := flag.Float64("seconds", 2, "how long new calls are written")
	serverPids := flag.String("server-pids", "", "comma-separated pids whose CPU is the server's")
	parallel := flag.Int("parallel", 200, "connections opened at once")
	pipelined := flag.Bool("pipelined", false, "write a connection's calls together")
	holdMode := flag.Bool("hold", false, "hold -conns idle connections from -sources (hold.go)")
	sources := flag.String("sources", "127.0.0.1", "with -hold: comma-separated source addresses")
	floorMode := flag.Bool("floor", false, "be the bare broadcast server on -port (floor.go)")
	flag.Parse()
	if *holdMode {
		hold(*host, *port, *path, *conns, *parallel, *sources)
		return
	}
	if *floorMode {
		floor(*host, *port)
		return
	}
	if *port == 0 || *serverPids == "" {
		fmt.Fprintln(os.Stderr, "-port and -server-pids are required")
		os.Exit(2)
	}
	pids := strings.Split(*serverPids, ",")
	serverCPU := func() float64 {
		total := 0.0
		for _, pid := range pids {
			total += cpuSeconds(pid)
		}
		return total
	}
	address := (&url.URL{Scheme: "ws", Host: fmt.Sprintf("%s:%d", *host, *port), Path: *path}).String()

	r := &run{failure: make(chan error, 1), epoch: time.Now()}
	callers := make([]*caller, *conns)
	connectStart := time.Now()
	var opening sync.WaitGroup
	slots := make(chan struct{}, *parallel)
	for i := range callers {
		opening.Add(1)
		slots <- struct{}{}
		go func(i int) {
			defer func() { <-slots; opening.Done() }()
			ws, err := dial(address)
			if err != nil {
				r.fail(fmt.Errorf("connection %d: %w", i, err))
				return
			}
			callers[i] = &caller{run: r, ws: ws, depth: *depth, sent: make(map[string]time.Duration, *depth)}
		}(i)
	}
	opening.Wait()
	connectWall := time.Since(connectStart).Seconds()
	select {
	case err := <-r.failure:
		fmt.Fprintln(os.Stderr, "loadgen_go:", err)
		os.Exit(1)
	default:
	}

	start := make(chan struct{})
	var drained sync.WaitGroup
	for _, c := range callers {
		drained.Add(1)
		go func(c *caller) {
			defer drained.Done()
			loop := c.loop
			if *pipelined {
				loop = c.pipelinedLoop
			}
			if err := loop(start); err != nil {
				r.fail(err)
			}
		}(c)
	}
	r.running.Store(true)
	cpu0, own0 := serverCPU(), cpuSeconds("self")
	windowStart := time.Now()
	close(start)
	time.Sleep(time.Duration(*seconds * float64(time.Second))) // the measurement window itself
	r.running.Store(false)

	done := make(chan struct{})
	go func() { drained.Wait(); close(done) }()
	select {
	case <-done:
	case err := <-r.failure:
		fmt.Fprintln(os.Stderr, "loadgen_go:", err)
		os.Exit(1)
	case <-time.After(30 * time.Second):
		fmt.Fprintln(os.Stderr, "loadgen_go: calls still unanswered 30 s after the window")
		os.Exit(1)
	}
	wall := time.Since(windowStart).Seconds()
	cpu, own := serverCPU()-cpu0, cpuSeconds("self")-own0
	select {
	case err := <-r.failure:
		fmt.Fprintln(os.Stderr, "loadgen_go:", err)
		os.Exit(1)
	default:
	}

	var samples []time.Duration
	for _, c := range callers {
		samples = append(samples, c.samples...)
		c.ws.Close()
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	if int64(len(samples)) != r.answered.Load() {
		fmt.Fprintln(os.Stderr, "loadgen_go: answers and samples differ")
		os.Exit(1)
	}
	p50, p99 := p50p99(samples)
	out, err := json.Marshal(Result{
		Loadgen: "go", Conns: *conns, Depth: *depth, Deliveries: r.answered.Load(),
		Wall: wall, CPU: cpu, LoadgenCPU: own,
		P50Ms: p50, P99Ms: p99, ConnectWall: connectWall,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen_go:", err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}
