"""Several wse-fast processes as one logical server, over NATS."""
