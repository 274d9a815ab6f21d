"""What every actor uses, written once: helper threads, the worker pool, backoff, atomic files,
Docker clients, logs and redaction."""
