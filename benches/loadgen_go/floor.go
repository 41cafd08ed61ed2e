// The floor mode (-floor) of benches/scale.py: a bare WSE broadcast server, as little server
// as a broadcast can have, so that the time the hold mode measures against it is what the
// kernel and the load generator take.
//
// It listens on -host:-port with SO_REUSEPORT (several floor processes share a port, as the
// workers of wse-fast serve do), upgrades with gorilla, answers a hi with the welcome and then
// only reads. A line "broadcast NS" on stdin writes ["tick","NS",null] (NS: 19 digits, the
// CLOCK_MONOTONIC nanoseconds the benchmark took before the line) to every connection: the
// frame built once, the writes spread over one goroutine per CPU. It prints "READY PORT"
// once it listens and {"sent": N} after each broadcast.
package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

var hiHead = []byte(`["~wse:hi",`)

const soReusePort = 15 // <asm-generic/socket.h>; Go's syscall package does not name it

type floorServer struct {
	upgrader websocket.Upgrader
	mu       sync.Mutex
	conns    map[*websocket.Conn]struct{}
}

func (s *floorServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // gorilla has answered the request with its error
	}
	defer ws.Close()
	ws.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, message, err := ws.ReadMessage(); err != nil || !bytes.HasPrefix(message, hiHead) {
		return
	}
	ws.SetReadDeadline(time.Time{})
	if err := ws.WriteMessage(websocket.TextMessage, welcome); err != nil {
		return
	}
	s.mu.Lock()
	s.conns[ws] = struct{}{}
	s.mu.Unlock()
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			break
		}
	}
	s.mu.Lock()
	delete(s.conns, ws)
	s.mu.Unlock()
}

// broadcast writes message to every connection, one goroutine per CPU taking its share.
func (s *floorServer) broadcast(message []byte) int {
	prepared, err := websocket.NewPreparedMessage(websocket.TextMessage, message)
	if err != nil {
		panic(err)
	}
	s.mu.Lock()
	conns := make([]*websocket.Conn, 0, len(s.conns))
	for ws := range s.conns {
		conns = append(conns, ws)
	}
	s.mu.Unlock()
	writers := runtime.GOMAXPROCS(0)
	var done sync.WaitGroup
	for w := 0; w < writers; w++ {
		done.Add(1)
		go func(w int) {
			defer done.Done()
			for i := w; i < len(conns); i += writers {
				conns[i].WritePreparedMessage(prepared) // a closed one is gone from the count
			}
		}(w)
	}
	done.Wait()
	return len(conns)
}

func floor(host string, port int) {
	s := &floorServer{
		upgrader: websocket.Upgrader{
			Subprotocols: []string{subprotocol}, ReadBufferSize: 512, WriteBufferPool: &sync.Pool{},
			CheckOrigin: func(*http.Request) bool { return true },
		},
		conns: map[*websocket.Conn]struct{}{},
	}
	config := net.ListenConfig{Control: func(_, _ string, raw syscall.RawConn) error {
		var sockErr error
		err := raw.Control(func(fd uintptr) {
			sockErr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, soReusePort, 1)
		})
		if err != nil {
			return err
		}
		return sockErr
	}}
	listener, err := config.Listen(context.Background(), "tcp", fmt.Sprintf("%s:%d", host, port))
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen_go:", err)
		os.Exit(1)
	}
	go func() {
		err := http.Serve(listener, s)
		fmt.Fprintln(os.Stderr, "loadgen_go:", err)
		os.Exit(1)
	}()
	fmt.Println("READY", listener.Addr().(*net.TCPAddr).Port)

	commands := bufio.NewScanner(os.Stdin)
	for commands.Scan() {
		command, argument, _ := strings.Cut(commands.Text(), " ")
		if command != "broadcast" || len(argument) != 19 {
			fmt.Fprintf(os.Stderr, "loadgen_go: not broadcast NS: %q\n", commands.Text())
			os.Exit(2)
		}
		sent := s.broadcast([]byte(`["tick","` + argument + `",null]`))
		printJSON(map[string]any{"sent": sent})
	}
}
