"""The network client: TLS transport, login, and a Repository that lives on a server."""
