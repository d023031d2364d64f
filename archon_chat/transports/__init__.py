"""I/O shells: the only code that touches quart request and websocket objects."""
