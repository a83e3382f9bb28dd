"""The `liteembed` command line: serve, worker, migrate, demo (the top layer: it may import
every other package, and no package of the layers below imports it)."""
