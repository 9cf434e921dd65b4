"""The read-only web pages, JSON API and Prometheus metrics over a store (``run_pipeline.py serve``)."""
