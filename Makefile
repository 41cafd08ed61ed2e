# Everything the project needs is installed from here; the README's two commands are
# `make demo` and `make test`, and .ci/run calls `make test`.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_QUIET := 1

.PHONY: setup browser-setup nginx-setup docs demo test lint test-rust test-py test-pure test-sendloop wheel-check conformance conformance-deflate fuzz bench-setup bench-codec bench bench-full bench-cluster bench-rpc bench-memory bench-compression clean bench-storm sdist-check bench-drain bench-scale

LOADGEN_GO := benches/.bin/loadgen_go

$(VENV)/bin/maturin:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "maturin>=1.7,<2"

# Builds the extension in release mode into python/wse_fast/ and installs the runtime and dev
# dependencies (cargo and pip skip what is already there).
setup: $(VENV)/bin/maturin tests/node/node_modules $(LOADGEN_GO)
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release --extras dev,docs -q

# The second load generator of the RPC benchmark (Go, gorilla/websocket from the Go module proxy,
# pinned by go.sum); tests/test_loadgen_go.py runs it against a wse-fast server.
$(LOADGEN_GO): $(wildcard benches/loadgen_go/*.go) benches/loadgen_go/go.mod benches/loadgen_go/go.sum
	cd benches/loadgen_go && go build -o ../.bin/loadgen_go .

# The independent Node.js peer of the test suite (npm ws), pinned by its lock file.
tests/node/node_modules: tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Debian's Chromium, for the browser test (as root, as on CI; a developer may install it).
browser-setup:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# Debian's nginx, for the deployment guide's proxy test (tests/test_deploy_nginx.py starts it
# itself, in the foreground on 127.0.0.1; the package's own service is not needed).
nginx-setup:
	test -x /usr/sbin/nginx || command -v nginx >/dev/null || (apt-get update -qq && apt-get install -y -qq nginx >/dev/null)

# The documentation site (MkDocs + Material + mkdocstrings) into site/; the test suite builds
# it with --strict and runs the programs on its pages (tests/test_docs.py).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

demo: setup
	$(PY) examples/demo.py

lint: setup
	$(VENV)/bin/ruff check python tests benches examples fuzz tools docs/hooks.py
	$(VENV)/bin/ruff format --check python tests benches examples fuzz tools docs/hooks.py
	$(VENV)/bin/mypy
	cargo fmt --check
	cargo clippy --release --all-targets -q -- -D warnings

test-rust:
	cargo test --release -q

test-py: setup
	$(PY) -m pytest -q

test-pure: setup
	WSE_FAST_PURE=1 $(PY) -m pytest -q

# The Rust codec's other way to the kernel for paced fan-out (io_uring is the default).
test-sendloop: setup
	WSE_FAST_IO_URING=0 $(PY) -m pytest -q tests/test_fanout_engine.py tests/test_behaviour.py

# The release wheel installs and works in a fresh virtual environment with no Rust toolchain.
wheel-check: setup
	rm -rf dist /tmp/wse-fast-wheel-venv
	$(VENV)/bin/maturin build --release -q -o dist
	$(PYTHON) -m venv /tmp/wse-fast-wheel-venv
	env PATH=/usr/bin:/bin /tmp/wse-fast-wheel-venv/bin/python -m pip install -q dist/*.whl
	cd /tmp && env PATH=/usr/bin:/bin /tmp/wse-fast-wheel-venv/bin/python -c "import wse_fast.codec as c; assert c.IMPLEMENTATION == 'rust'; assert c.unpack_json(c.pack_json('t', {'a': 1}, None)) == ('t', {'a': 1}, None); print('wheel ok:', c._impl.__file__)"

# The source distribution holds what building needs and nothing big (benches/results,
# node_modules), and installs in a fresh virtual environment, compiling the extension with
# cargo (deps cached in target/sdist-check, the crate built anew from the unpacked sdist).
SDIST_DIR := /tmp/wse-fast-sdist
SDIST_VENV := /tmp/wse-fast-sdist-venv
sdist-check: setup
	rm -rf $(SDIST_DIR) $(SDIST_VENV)
	$(PY) -m build --sdist -o $(SDIST_DIR) .
	$(PY) -c "import sys, tarfile; names = [n.split('/', 1)[1] for n in tarfile.open(sys.argv[1]).getnames()]; \
		need = {'Cargo.toml', 'Cargo.lock', 'pyproject.toml', 'LICENSE', 'README.md', 'CHANGELOG.md', 'rust/src/lib.rs', 'python/wse_fast/__init__.py', 'python/wse_fast/py.typed', 'python/wse_fast/_codec.pyi'}; \
		missing = need - set(names); extra = [n for n in names if n.split('/')[0] not in {'rust', 'python'} and '/' in n]; \
		assert not missing and not extra, (missing, extra); print('sdist holds', len(names), 'files')" $(SDIST_DIR)/*.tar.gz
	$(PYTHON) -m venv $(SDIST_VENV)
	CARGO_TARGET_DIR=$(abspath target/sdist-check) $(SDIST_VENV)/bin/python -m pip install -q $(SDIST_DIR)/*.tar.gz
	cd /tmp && $(SDIST_VENV)/bin/python -c "import wse_fast, wse_fast.codec as c; assert c.IMPLEMENTATION == 'rust'; assert c.unpack_json(c.pack_json('t', {'a': 1}, None)) == ('t', {'a': 1}, None); print('sdist ok:', c._impl.__file__)"

test: browser-setup nginx-setup lint test-rust test-py test-pure test-sendloop wheel-check sdist-check

# RFC 6455 conformance: the Autobahn fuzzing client (groups 1-7, 9, 10; Python 2.7, installed
# with pinned versions into tests/autobahn/.env on first use) against examples/echo_server.py.
# Fails on any case that is not OK, NON-STRICT or INFORMATIONAL.
conformance: setup
	$(PY) tests/autobahn/run.py

# Groups 12 and 13 (permessage-deflate) against the echo server with compression on (~20 min).
conformance-deflate: setup
	$(PY) tests/autobahn/run.py --deflate

FUZZ_TIME ?= 600

# Coverage-guided fuzzing on demand (the test suite runs each harness briefly); see fuzz/README.md.
fuzz: setup
	$(PY) fuzz/receive_path.py -max_total_time=$(FUZZ_TIME)
	WSE_FAST_PURE=1 $(PY) fuzz/receive_path.py -max_total_time=$(FUZZ_TIME)
	$(PY) fuzz/codec_differential.py -max_total_time=$(FUZZ_TIME)

# The benchmark peers (aiohttp, python-socketio) and taskset, on top of the dev setup.
bench-setup: setup
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release --extras dev,bench -q
	command -v taskset >/dev/null || (apt-get update -qq && apt-get install -y -qq util-linux)
	command -v perf >/dev/null || (apt-get update -qq && apt-get install -y -qq linux-perf) || true
	sh benches/peers/wse_server_setup.sh || echo "the wse-server peer is left out: it needs CPython >= 3.12"
	$(WSE_JS_SETUP)

# The reference, JavaScript WSE 4.12.3, is not part of this repository: WSE_JS_DIR names a
# checkout of its 4.12.3 release (github.com/vovchisko/wse), into which bench-setup installs
# the dependencies it is measured with; benches/run.py reads the same variable.
WSE_JS_VERSION := 4.12.3
ifdef WSE_JS_DIR
WSE_JS_SETUP = test "$$(node -p "require('$(abspath $(WSE_JS_DIR))/package.json').version")" = $(WSE_JS_VERSION) \
	|| { echo "$(WSE_JS_DIR) is not JavaScript WSE $(WSE_JS_VERSION)"; exit 1; }; \
	cd "$(WSE_JS_DIR)" && npm install --no-save --omit=dev --no-audit --no-fund --loglevel=error \
		a-signal@2.2.4 tseep@1.3.1 isomorphic-ws@5.0.0 ws@8 bufferutil@4 utf-8-validate@6
else
WSE_JS_SETUP = @echo "the JavaScript WSE $(WSE_JS_VERSION) peer is left out: make bench-setup WSE_JS_DIR=DIR, DIR a checkout of its $(WSE_JS_VERSION) release"
endif

# Fan-out, latency, RPC and connections beside the peers (1 000 connections, 64 B; a progress
# bar per part on a terminal), then the codec micro-benchmarks. Results: benches/results/.
bench: bench-setup bench-codec
	$(PY) benches/run.py

bench-full: bench-setup
	$(PY) benches/run.py --full

# RPC as independent clients send it, beside the pipelined case (perf counts system calls), from
# both load generators (Python and Go); JavaScript WSE first where WSE_JS_DIR is given
bench-rpc: bench-setup
	$(PY) benches/run.py --parts rpc-realistic rpc --runs 3 --loadgen python go --name rpc_realistic

# RSS per idle authenticated connection at the default options, and what each option costs
bench-memory: bench-setup
	$(PY) benches/memory.py --runs 3 --out benches/results/memory.md

# permessage-deflate: bytes on the wire and deliveries per server CPU-second, JSON of 1-16 KiB,
# beside websockets with compression on
bench-compression: bench-setup
	$(PY) benches/compression.py --conns 200 --count 200 --runs 3

# Nodes on one nats-server against one node, send-to-user across nodes, 2 workers against 1.
bench-cluster: bench-setup
	$(PY) benches/cluster.py

# A server with 15 000 clients killed (SIGKILL) and restarted: time until every client is back,
# at uvloop's old backlog (100) and at the default (somaxconn). Results: benches/results/.
bench-storm: setup
	$(PY) benches/reconnect_storm.py --out benches/results/reconnect_storm

# 100 000 authenticated connections through wse-fast serve --workers 6 (its own nats-server),
# opened by 8 processes of the Go load generator from 500 addresses 127.3.x.y, every process
# at 20 000 files: memory (PSS and RSS), time to connect, idle CPU and the last receipt of one
# broadcast, beside the same clients against a bare Go server. Results: benches/results/scale.*
bench-scale: setup
	$(PY) benches/scale.py --out benches/results/scale

# SIGTERM on wse-fast serve with 1 000 calls in flight (0-2 s each): answered, cancelled and
# lost calls and the time to exit, at the default grace, 1 s and 0 (BASELINE=checkout: and
# that code's, built in place)
bench-drain: bench-setup
	$(PY) benches/drain.py --clients 1000 $(if $(BASELINE),--baseline $(BASELINE))

bench-codec: setup
	taskset -c 1 $(PY) -m pytest benches/bench_codec.py -q -p no:randomly --benchmark-only \
		--benchmark-columns=median,ops --benchmark-sort=name --benchmark-json=/tmp/wse-codec.json
	$(PY) benches/codec_report.py /tmp/wse-codec.json benches/results

clean:
	rm -rf $(VENV) target dist python/wse_fast/*.so
