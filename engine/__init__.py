"""The query engine and the command line."""
