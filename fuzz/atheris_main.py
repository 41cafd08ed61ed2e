"""What every harness in this folder shares: coverage instrumentation and the libFuzzer main.

A harness module defines ``one_input(data: bytes) -> None``, which returns for every input the
code under test handles as documented and raises for anything else, and ``seeds()``, a few
valid inputs to start from. Run as a program it is an atheris fuzzer (libFuzzer flags and
corpus directories on the command line); imported, it is a plain function the test suite calls.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import atheris  # type: ignore[import-untyped]

#: The package whose Python code gets coverage feedback. The Rust extension, orjson and msgpack
#: are native code without it: the fuzzer reaches them through the Python code around them.
INSTRUMENTED = ["wse_fast"]


@contextlib.contextmanager
def instrumented_imports(module_name: str) -> Iterator[None]:
    """atheris's coverage instrumentation of the imports in the block, when ``module_name``
    is ``"__main__"`` (the harness runs as the fuzzer); nothing when a test imports it."""
    if module_name != "__main__":
        yield
        return
    with atheris.instrument_imports(include=INSTRUMENTED):
        yield


def _seed_corpus(argv: list[str], seeds: dict[str, bytes], default: Path) -> list[str]:
    """The arguments with a corpus directory (``default`` when none is given), and the seeds
    written into it. An argument that is a file means "run these inputs once" (libFuzzer's
    reproduce mode), which gets no corpus."""
    paths = [Path(a) for a in argv[1:] if not a.startswith("-")]
    if not paths:
        paths, argv = [default], [*argv, str(default)]
    if paths[0].is_file():
        return argv
    paths[0].mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (paths[0] / f"seed-{name}").write_bytes(data)
    return argv


def run(
    one_input: Callable[[bytes], None], seeds: dict[str, bytes], argv: list[str], corpus: Path
) -> Any:
    """libFuzzer's main loop over ``one_input``: returns only when the run ends without a
    finding (``-runs``, ``-max_total_time``); a finding exits the process with its input saved
    (``crash-<sha1>``, see ``-artifact_prefix``)."""
    atheris.Setup(_seed_corpus(argv, seeds, corpus), one_input)
    return atheris.Fuzz()


def main(one_input: Callable[[bytes], None], seeds: dict[str, bytes]) -> None:
    """The harness's command line. Without a corpus directory, fuzz/corpus/<harness>/ collects
    the inputs worth keeping from run to run; findings are saved in fuzz/ unless
    ``-artifact_prefix`` says otherwise (both kept out of git by fuzz/.gitignore); tokens come
    from fuzz/wse.dict unless ``-dict`` names another dictionary."""
    here = Path(__file__).resolve().parent
    argv = sys.argv
    if not any(a.startswith("-artifact_prefix=") for a in argv):
        argv = [*argv, f"-artifact_prefix={here}/"]  # findings land beside the harnesses
    if not any(a.startswith("-dict=") for a in argv):
        argv = [*argv, f"-dict={here / 'wse.dict'}"]
    run(one_input, seeds, argv, here / "corpus" / Path(argv[0]).stem)
