"""Stats' parts: the PROTOCOL 5.2/5.3 formulas and the Docker stats streams."""
