"""The Deployer's parts (see actors/deployer.py): compose output parsing, service classification,
stack files, bind-mount mapping, the compose engine, the journal, and the run procedure."""
