"""The agent's actors; each one's helpers live in a subpackage beside it."""
