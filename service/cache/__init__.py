"""Vector caches: Redis and in-process stores, key spaces, value layout, and the housekeeping commands."""
