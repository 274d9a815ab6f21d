"""Pure rules the actors enforce: the server's policy, protected containers, audit."""
