"""strongroom-server: users, TLS, per-user pack stores, and the asyncio protocol server."""
