"""Images for the tests, made offline: nothing is ever pulled. No pytest dependency.

* :func:`make_busybox_image` imports a tiny rootfs around the host's static busybox.
* :func:`build_python_base_image` imports a Debian rootfs with python3 made by debootstrap (the
  tarball is cached in :data:`tests.support.hostenv.CACHE_DIR`).
* :func:`build_agent_image` builds the agent from this checkout's ``Dockerfile`` on that base,
  with wheels made on the host and ``network_mode="none"`` for the build.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors

from tests.support.hostenv import (
    CACHE_DIR,
    SYSTEM_PATH,
    DockerEnvError,
    host_network_env,
    remove_tree,
    tail,
    unmount_under,
)

DEFAULT_BUSYBOX_TAG = "dockmon-test/busybox:latest"
DEFAULT_PYTHON_BASE_TAG = "dockmon-test/python-base:bookworm"
DEFAULT_AGENT_TAG = "dockmon-test/agent:dev"
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"

# Applets the tests rely on; make_busybox_image fails loudly if busybox lacks one.
REQUIRED_APPLETS: tuple[str, ...] = (
    "sh", "sleep", "echo", "cat", "ls", "true", "false", "kill", "wget", "nc", "ps", "date",
    "env", "printf", "yes", "head",
)  # fmt: skip
# Linked too when this busybox has them (handy, not required).
OPTIONAL_APPLETS: tuple[str, ...] = (
    "ash", "tail", "grep", "sed", "awk", "mkdir", "rm", "cp", "mv", "touch", "id", "hostname",
    "uname", "wc", "test", "[", "seq", "tee", "timeout", "pidof", "killall", "xargs", "tr",
    "sort", "uniq", "cut", "chmod", "ln", "pwd", "mkfifo", "stat", "dd", "httpd", "sha256sum",
    "base64", "whoami", "top", "nproc", "realpath", "dirname", "basename", "tar", "gzip",
)  # fmt: skip


def _image_with_label(client: docker.DockerClient, tag: str, key: str, value: str) -> str | None:
    """Id of image ``tag`` if it exists and carries label ``key=value``."""
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    labels = image.attrs.get("Config", {}).get("Labels") or {}
    return str(image.id) if labels.get(key) == value else None


def _import_result_id(client: docker.DockerClient, result: Any, tag: str) -> str:
    """docker-py returns the import's JSON progress as text; the tag is the reliable handle."""
    text = result if isinstance(result, str) else json.dumps(result)
    if '"error"' in text or "errorDetail" in text:
        raise DockerEnvError(f"import of {tag} failed: {text[-2000:]}")
    return str(client.images.get(tag).id)


def _is_static_elf(path: Path) -> bool:
    """True if ``path`` is an ELF executable without a PT_INTERP (dynamic loader) header."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF":
            return False
        is64 = head[4] == 2
        order: Literal["little", "big"] = "little" if head[5] == 1 else "big"
        if is64:
            phoff = int.from_bytes(head[0x20:0x28], order)
            phentsize = int.from_bytes(head[0x36:0x38], order)
            phnum = int.from_bytes(head[0x38:0x3A], order)
        else:
            phoff = int.from_bytes(head[0x1C:0x20], order)
            phentsize = int.from_bytes(head[0x2A:0x2C], order)
            phnum = int.from_bytes(head[0x2C:0x2E], order)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            if int.from_bytes(f.read(4), order) == 3:  # PT_INTERP
                return False
    return True


def _find_static_busybox() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        p = Path(candidate)
        if p.is_file() and _is_static_elf(p):
            return p
    raise DockerEnvError("no statically linked busybox found; install Debian's busybox-static")


def make_busybox_image(client: docker.DockerClient, tag: str = DEFAULT_BUSYBOX_TAG) -> str:
    """Import a tiny busybox rootfs as ``tag`` (reused if already imported); return its id."""
    busybox = _find_static_busybox()
    available = set(
        subprocess.run(
            [str(busybox), "--list"], check=True, capture_output=True, text=True
        ).stdout.split()
    )
    missing = [a for a in REQUIRED_APPLETS if a not in available]
    if missing:
        raise DockerEnvError(f"{busybox} lacks applets {missing}")
    applets = sorted({*REQUIRED_APPLETS, *(a for a in OPTIONAL_APPLETS if a in available)})
    blob = busybox.read_bytes()
    key = hashlib.sha256(blob + "\0".join(["v1", *applets]).encode()).hexdigest()[:16]
    label = "dockmon-test.busybox-key"
    existing = _image_with_label(client, tag, label, key)
    if existing:
        return existing

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for d in ("bin", "etc", "root", "proc", "sys", "dev", "usr", "usr/bin", "var"):
            add_dir(d, 0o700 if d == "root" else 0o755)
        add_dir("tmp", 0o1777)
        add_dir("var/tmp", 0o1777)
        add_file("bin/busybox", blob, 0o755)
        for applet in applets:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(link)
        add_file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    changes = [
        "ENV PATH=/bin:/usr/bin",
        'CMD ["sh"]',
        f"LABEL {label}={key}",
    ]
    repository, _, tagname = tag.rpartition(":")
    result = client.api.import_image_from_data(
        buf.getvalue(), repository=repository, tag=tagname, changes=changes
    )
    return _import_result_id(client, result, tag)


def host_debian_mirror(suite: str = "bookworm", apt_dir: Path = Path("/etc/apt")) -> str:
    """The host's apt mirror for ``suite`` (deb822 .sources first, then sources.list)."""
    candidates: list[str] = []
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                k, _, v = line.partition(":")
                fields[k.strip().lower()] = v.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if (
                "deb" in fields.get("types", "").split()
                and suite in fields.get("suites", "").split()
            ):
                candidates.extend(fields.get("uris", "").split())
    list_files = [
        apt_dir / "sources.list",
        *sorted((apt_dir / "sources.list.d").glob("*.list")),
    ]
    for path in list_files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                candidates.append(words[1])
    for uri in candidates:
        if uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
    return DEFAULT_DEBIAN_MIRROR


def build_python_base_image(
    client: docker.DockerClient,
    tag: str = DEFAULT_PYTHON_BASE_TAG,
    *,
    suite: str = "bookworm",
    mirror: str | None = None,
    cache_dir: Path = CACHE_DIR,
) -> str:
    """A Debian ``suite`` rootfs with python3 + venv, from debootstrap, imported as ``tag``.

    The rootfs tarball is cached in ``cache_dir`` under a hash of the debootstrap arguments, and
    the import is skipped when ``tag`` already carries that hash; a warm call takes seconds.
    """
    key, tarball_of = _python_rootfs(suite, mirror, cache_dir)
    label = "dockmon-test.base-key"
    existing = _image_with_label(client, tag, label, key)
    if existing:
        return existing
    tarball = tarball_of()
    changes = [
        f"ENV PATH={SYSTEM_PATH}",
        "ENV LANG=C.UTF-8",
        'CMD ["python3"]',
        f"LABEL {label}={key}",
    ]
    repository, _, tagname = tag.rpartition(":")
    result = client.api.import_image_from_file(
        str(tarball), repository=repository, tag=tagname, changes=changes
    )
    return _import_result_id(client, result, tag)


def _python_rootfs(
    suite: str, mirror: str | None, cache_dir: Path
) -> tuple[str, Callable[[], Path]]:
    """(cache key, make-or-reuse the tarball) of a minimal Debian ``suite`` with python3."""
    mirror = mirror or host_debian_mirror(suite)
    args = [
        "--variant=minbase",
        "--include=python3,python3-venv,ca-certificates",
        f"--arch={_debian_arch()}",
        suite,
    ]
    key = hashlib.sha256(json.dumps(["v1", args, mirror]).encode()).hexdigest()[:16]
    return key, lambda: _cached_rootfs_tarball(cache_dir, f"{suite}-python-{key}", args, mirror)


def python_rootfs_tarball(
    suite: str = "bookworm", *, mirror: str | None = None, cache_dir: Path = CACHE_DIR
) -> Path:
    """The cached debootstrap tarball the Python base image is made from (built if missing)."""
    return _python_rootfs(suite, mirror, cache_dir)[1]()


def _debian_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "i686": "i386"}.get(
        machine, machine
    )


def _cached_rootfs_tarball(cache_dir: Path, name: str, args: list[str], mirror: str) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / f"{name}.tar"
    if tarball.exists():
        return tarball
    with open(cache_dir / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building the same tarball
        if tarball.exists():
            return tarball
        work = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=cache_dir))
        try:
            rootfs = work / "rootfs"
            log = work / "debootstrap.log"
            with open(log, "wb") as out:
                proc = subprocess.run(
                    ["debootstrap", *args, str(rootfs), mirror],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=host_network_env(),
                    check=False,
                )
            if proc.returncode != 0:
                raise DockerEnvError(
                    f"debootstrap {' '.join(args)} {mirror} failed ({proc.returncode}):\n"
                    f"{tail(log)}\n--- rootfs/debootstrap/debootstrap.log:\n"
                    f"{tail(rootfs / 'debootstrap' / 'debootstrap.log')}"
                )
            unmount_under(rootfs)
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "var/log"):
                for p in (rootfs / junk).glob("*"):
                    if p.is_file() or p.is_symlink():
                        p.unlink()
            for p in (rootfs / "var/cache/apt").glob("*.bin"):
                p.unlink()
            partial = work / "rootfs.tar"
            tar_cmd = [
                "tar", "--numeric-owner", "--xattrs", "-C", str(rootfs),
                "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
                "-cf", str(partial), ".",
            ]  # fmt: skip
            tar = subprocess.run(
                tar_cmd,
                capture_output=True,
                text=True,
                check=False,
            )
            if tar.returncode != 0:
                raise DockerEnvError(f"tar of {rootfs} failed: {tar.stderr[-2000:]}")
            os.replace(partial, tarball)
        finally:
            remove_tree(work)
    return tarball


_CONTEXT_EXCLUDES = (
    ".git", "__pycache__", "*.pyc", "*.pyo", ".pytest_cache", ".mypy_cache", ".ruff_cache",
    "*.egg-info", "build", "dist", ".venv", "venv", "wheels", ".tox", ".tmp", ".benchmarks",
)  # fmt: skip


def _copy_build_context(repo_root: Path, dest: Path) -> None:
    root = repo_root.resolve()

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = Path(directory).resolve().relative_to(root)
        skipped = {n for n in names if any(fnmatch.fnmatch(n, pat) for pat in _CONTEXT_EXCLUDES)}
        if rel == Path("bench"):
            skipped.add("results")
        return skipped

    shutil.copytree(root, dest, ignore=ignore, symlinks=True)


def build_agent_image(
    client: docker.DockerClient,
    repo_root: str | os.PathLike[str],
    tag: str = DEFAULT_AGENT_TAG,
    base_image: str = DEFAULT_PYTHON_BASE_TAG,
) -> str:
    """Build the agent image offline (wheels made on the host, ``network_mode="none"``).

    Returns the image id; raises :class:`DockerEnvError` with the pip or build log on failure.
    """
    repo = Path(repo_root).resolve()
    ctx = Path(tempfile.mkdtemp(prefix="dm-ctx-"))
    try:
        src = ctx / "context"
        _copy_build_context(repo, src)
        # Wheel the copy: pip builds local projects in-tree, and the repo is not ours to litter.
        pip_cmd = [
            sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check",
            "--wheel-dir", str(src / "wheels"), str(src),
        ]  # fmt: skip
        wheel = subprocess.run(
            pip_cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=host_network_env(),
            check=False,
        )
        if wheel.returncode != 0:
            raise DockerEnvError(
                f"pip wheel failed ({wheel.returncode}):\n{wheel.stdout[-4000:]}\n"
                f"{wheel.stderr[-4000:]}"
            )
        log: list[str] = []
        image_id: str | None = None
        for chunk in client.api.build(
            path=str(src),
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            network_mode="none",
            buildargs={
                "BASE_IMAGE": base_image,
                "PIP_INSTALL_ARGS": "--no-index --find-links=/tmp/wheels",
            },
            decode=True,
        ):
            if "stream" in chunk:
                log.append(str(chunk["stream"]))
            if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                image_id = str(chunk["aux"]["ID"])
            if "error" in chunk or "errorDetail" in chunk:
                detail = chunk.get("error") or chunk.get("errorDetail")
                raise DockerEnvError(
                    f"docker build of {tag} failed: {detail}\n--- build log:\n"
                    + "".join(log)[-8000:]
                )
        return image_id or str(client.images.get(tag).id)
    finally:
        remove_tree(ctx)
