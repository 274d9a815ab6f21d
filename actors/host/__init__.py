"""Facts about the host and the process: privileges, Docker access, host IPs."""
