"""I/O worlds the sans-I/O core plugs into. Only picows for now."""
