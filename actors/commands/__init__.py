"""DockerGateway's command families (images, networks, volumes, compose files)."""
