"""Built-in features: each package is a plugin using the same hooks as third-party ones."""
