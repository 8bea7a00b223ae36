"""Built-in event sinks, each a plugin registering one sink type."""
