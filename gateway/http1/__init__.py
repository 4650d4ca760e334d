"""The HTTP/1.1 upstream client: a keep-alive pool and the reuse rules of one connection; it knows nothing of ZGW."""
