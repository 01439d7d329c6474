"""Fast tier (`make test-fast`): fakes and tiny in-memory graphs, no torch export, no subprocess."""
