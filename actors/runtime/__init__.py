"""What every actor uses, written once: atomic files, Docker clients, logs and redaction."""
