"""The re-ID stage: tracklets in, embeddings out."""
