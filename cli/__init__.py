"""The `liteembed` command line: serve, worker, migrate, demo (the top layer: it may import
every other package, and nothing imports it)."""
