"""What the tests stand on: the strict fake DockMon hub, the private Docker daemon and its
images, containers and registries, the fakes at the actors' I/O seams, and the harnesses."""
