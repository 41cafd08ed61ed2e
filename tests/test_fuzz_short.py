"""A short run of each fuzz harness in fuzz/, and the inputs those harnesses have found.

Each harness runs as the atheris fuzzer it is, in a subprocess (libFuzzer owns the process and
exits on a finding), for a fixed number of inputs from a fixed seed, starting from the seed
corpus it writes itself; it must finish every run without a finding. Longer runs on demand:
fuzz/README.md. The regression tests below call the harness functions in this process on
inputs that fuzzing turned up, minimised.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from wse_fast import codec

FUZZ_DIR = Path(__file__).resolve().parent.parent / "fuzz"

#: Inputs per harness: together about 10 s on one core, either codec.
RUNS = {"receive_path": 30_000, "codec_differential": 15_000}


def finding_report(proc: subprocess.CompletedProcess[str], artifacts: list[Path]) -> str:
    tail = "\n".join(proc.stderr.splitlines()[-40:])
    inputs = "\n".join(f"{a.name}: {a.read_bytes()!r}" for a in artifacts)
    return f"exit {proc.returncode}\n{tail}\ninputs:\n{inputs}"


@pytest.mark.parametrize("harness", sorted(RUNS))
def test_short_fuzz_run_finds_nothing(harness: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    runs = RUNS[harness]
    proc = subprocess.run(
        [
            sys.executable,
            str(FUZZ_DIR / f"{harness}.py"),
            str(corpus),
            f"-runs={runs}",
            "-seed=1",
            "-max_len=4096",
            "-timeout=10",  # seconds for one input: a slower one is a finding too
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=55,
    )
    artifacts = [p for p in tmp_path.iterdir() if p.is_file()]
    assert proc.returncode == 0 and not artifacts, finding_report(proc, artifacts)
    # it did fuzz: the seeds were read and every run made
    seeds = re.search(r"seed corpus: files: (\d+)", proc.stderr)
    assert seeds is not None and int(seeds.group(1)) >= 3, proc.stderr[-2000:]
    assert f"Done {runs} runs" in proc.stderr, proc.stderr[-2000:]


# ---- regressions -------------------------------------------------------------------------------


@pytest.fixture
def receive_path(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(FUZZ_DIR))
    return importlib.import_module("receive_path")


@pytest.fixture
def codec_differential(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(FUZZ_DIR))
    return importlib.import_module("codec_differential")


def nested_json(levels: int) -> bytes:
    """An envelope whose payload is ``levels`` arrays deep."""
    return b'["a",' + b"[" * levels + b"]" * levels + b"]"


def test_seeds_pass_their_harness(receive_path: ModuleType, codec_differential: ModuleType) -> None:
    for harness in (receive_path, codec_differential):
        for data in harness.seeds().values():
            harness.one_input(data)


def test_receive_path_takes_json_nested_deeper_than_the_decoder_goes(
    receive_path: ModuleType,
) -> None:
    """Found by fuzzing with WSE_FAST_PURE=1: the pure codec's unpack_json let json.loads's
    RecursionError out instead of EnvelopeError. Either codec must refuse (or take) such a
    message with the documented error."""
    config = receive_path.Config(structured=False, max_size=4096, challenges=0, slow_identify=False)
    for levels in (1000, 2000):
        frame = codec.build_frame(0x1, nested_json(levels), mask=True)
        receive_path.one_input(bytes([config.byte()]) + frame)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'["a",18446744073709551616]', id="integer-beyond-64-bits"),
        pytest.param(b'["a",-9223372036854775809]', id="negative-integer-beyond-64-bits"),
        pytest.param(b'["a",1e400]', id="float-beyond-the-double-range"),
        pytest.param(b'["a","\\ud800"]', id="escaped-lone-surrogate"),
        pytest.param(nested_json(1000), id="nested-1000-deep"),
        pytest.param(nested_json(2000), id="nested-2000-deep"),
    ],
)
def test_json_twins_agree(codec_differential: ModuleType, data: bytes) -> None:
    """Found by the differential harness: the Rust and the pure-Python unpack_json answered
    these differently (value, or accept against reject, or an error other than
    EnvelopeError)."""
    codec_differential.one_input(data)


def test_an_inflating_reader_may_hold_more_than_it_was_fed(codec_differential: ModuleType) -> None:
    """Found by the differential harness once seeded with fragmented compressed texts: 7
    bytes of a compressed message's first fragment inflate to 116 held for the next one,
    which its bound on what a reader keeps (never more than it was fed) counted as a finding;
    an inflating reader's bound is what it was fed plus the inflated limit."""
    codec_differential.one_input(
        b"FA\x87\xa4\xa1\xe2\x17\xee\xba\xe2\x17\xa4a\x1d\x07\x07\x07\x00\x89\x90+\xbb\xd0"
        b"\xdaQ\x00\xd0\x90+\xbb/o\x80\x84\xd0*\xd4P\xbab\xd2P"
    )
