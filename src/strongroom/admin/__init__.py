"""strongroom-admin: manage the users in a server's data folder."""
