"""strongroom: self-hosted, end-to-end encrypted, deduplicating backup."""

__version__ = "0.1.0"
