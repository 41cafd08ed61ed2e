"""``python -m wse_fast``: the ``wse-fast`` command (see :mod:`wse_fast.cli`)."""

from .cli import main

main()
