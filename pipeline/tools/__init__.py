"""Command-line tools that read a finished run: SQL queries and MOT evaluation."""
