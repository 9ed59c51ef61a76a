"""Offline dataset audits: chunked scoring, resumable and shardable, with a report."""
