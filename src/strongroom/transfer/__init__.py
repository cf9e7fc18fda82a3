"""Copying snapshots between two repositories the user can open (`strongroom copy`)."""
