"""The DockerGateway's side of the family registry: one handler for each family command it runs.

``messages.families`` says which role runs each command; for those the gateway runs (beyond the
container operations it implements itself) the handler modules are registered here, once.
``tests/test_families.py`` checks that every command routed to the gateway has exactly one
handler here and that :data:`FamilyCommand` (the gateway's Inbox share) names exactly them.
"""

from __future__ import annotations

from types import ModuleType
from typing import TypeAlias

from actors.commands import compose_files, images, networks, volumes
from actors.commands.tools import Handler
from messages.compose import ReadComposeFile, ScanComposeDirs
from messages.images import ListImages, PruneImages, RemoveImage
from messages.networks import CreateNetwork, DeleteNetwork, ListNetworks, PruneNetworks
from messages.volumes import DeleteVolume, ListVolumes, PruneVolumes

#: the gateway's command-family modules, each exporting ``HANDLERS: dict[type, Handler]``
MODULES: tuple[ModuleType, ...] = (images, networks, volumes, compose_files)

#: the family commands the gateway accepts, one handler each in :data:`HANDLERS`
FamilyCommand: TypeAlias = (
    ListImages
    | RemoveImage
    | PruneImages
    | ListNetworks
    | CreateNetwork
    | DeleteNetwork
    | PruneNetworks
    | ListVolumes
    | DeleteVolume
    | PruneVolumes
    | ScanComposeDirs
    | ReadComposeFile
)


def _handlers() -> dict[type, Handler]:
    merged: dict[type, Handler] = {}
    for module in MODULES:
        table: dict[type, Handler] = module.HANDLERS
        for kind, handler in table.items():
            if kind in merged:
                raise ImportError(f"{kind.__name__} has two handlers (second in {module.__name__})")
            merged[kind] = handler
    return merged


#: command type -> handler, merged from every command-family module
HANDLERS: dict[type, Handler] = _handlers()
