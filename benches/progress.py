"""The suite's output with a progress bar per part: what run.py prints goes through
:class:`Progress`, which knows from run.py's ``expected_results`` how many result lines
(indented) follow each part's header line.

The bar is drawn on stderr (click draws it only on a terminal); the part's results are held
back until the part is done and then printed on stdout, so that bar and results do not
overwrite each other on one terminal. Other lines pass through at once.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import click


class Progress:
    """Turns the suite's lines into a bar per header line it said it would print
    (``expected``: how many results follow each header)."""

    def __init__(self, expected: dict[str, int]) -> None:
        self.expected = expected
        self.bar: contextlib.ExitStack | None = None
        self.update: Callable[[int], None] | None = None
        self.results: list[str] = []

    def line(self, text: str) -> None:
        if text in self.expected:
            self.end_part()
            self.begin_part(text)
        elif text.startswith("  ") and self.update is not None:
            self.results.append(text)
            self.update(1)
        else:
            self.end_part()
            click.echo(text)

    def begin_part(self, header: str) -> None:
        click.echo(header)
        label = "  " + header.removesuffix(":")
        self.bar = contextlib.ExitStack()
        bar = self.bar.enter_context(
            click.progressbar(
                length=self.expected[header], label=label, show_pos=True, file=sys.stderr
            )
        )
        self.update = bar.update

    def end_part(self) -> None:
        """Closes the open bar, if any, and prints the results it held back."""
        if self.bar is not None:
            self.bar.close()
            self.bar = self.update = None
        for text in self.results:
            click.echo(text)
        self.results.clear()
