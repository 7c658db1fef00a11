"""The ingestion worker: scans collections and writes vectors and metadata (built in the ingestion issue)."""
