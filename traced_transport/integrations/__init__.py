"""One-line adapters per framework; each imports its framework and nothing of the OTel SDK."""
