"""wse-fast: WSE for Python."""

__version__ = "0.1.0"
