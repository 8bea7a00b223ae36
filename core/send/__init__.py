"""The outgoing path: a send body becomes one instrumented MIME message per recipient."""
