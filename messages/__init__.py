"""Typed messages exchanged by the actors; see the modules for each protocol."""
