"""Pure rules the actors enforce: the server's policy and audit, system paths, image references."""
