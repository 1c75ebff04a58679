"""Files written safely: atomic writes, destinations checked before any work, staging
folders of interrupted runs cleaned up.  Used by the run folders and the kernel store."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def default_mode(directory: bool) -> int:
    """The permissions `open`/`mkdir` would give under the current umask (0644/0755 with the
    usual 022): `tempfile.mkstemp`/`mkdtemp` create 0600/0700, unreadable to a shared group."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def make_temporary_folder(parent: Path, prefix: str) -> Path:
    """`tempfile.mkdtemp` with the umask's usual permissions (a run folder is renamed from it)."""
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    folder.chmod(default_mode(directory=True))
    return folder


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_mode(directory=False))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def discard_folder(path: Path) -> None:
    """Remove the folder `path`: renamed away first, so that no half-removed folder remains."""
    path = Path(path)
    trash = make_temporary_folder(path.parent, f".{path.name}.old-")
    path.replace(trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


def check_writable(path: str | Path, argument: str) -> None:
    """Fail before any work when `path` cannot be created: its folder must exist (or be
    creatable) and accept a new file (probed with a temporary file, removed at once)."""
    parent = Path(path).absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".ntklab-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{argument} {str(path)!r} cannot be written ({err.strerror or err}); "
                         f"choose a path in a folder you can write to") from err


def remove_stale_staging(destination: str | Path) -> None:
    """Remove the hidden staging folders `.NAME.partial-*` that interrupted runs into
    `destination` left beside it (called once a run into it has succeeded)."""
    destination = Path(destination)
    for stale in destination.parent.glob(f".{destination.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
