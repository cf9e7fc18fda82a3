"""The wire protocol, free of sockets (sans-IO): frames, messages and their encoding."""
