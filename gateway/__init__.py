"""zgw-gateway: an authenticating reverse proxy for the Dutch ZGW APIs."""

__version__ = "0.1.0"
