"""The data plane: the ASGI app and its steps, and everything one request needs on its way through."""
