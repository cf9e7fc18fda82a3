"""The web console and /metrics, served by strongroom-server on its own HTTPS port."""
