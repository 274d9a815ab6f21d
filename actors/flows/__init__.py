"""Updater's long flows: update_container, self_update, and their pure logic."""
