"""The checks behind ``dockmon-agent doctor``."""
