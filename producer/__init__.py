"""The producer (publishes license jobs) and the collector (stores their hashes)."""
