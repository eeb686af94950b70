"""Unpacking a downloaded archive without trusting its member list.

The checksum says the archive is the one we asked for; it says nothing about the archive being
safe, and a mirror, a proxy or a changed constant could hand over another. So every member is
checked before anything is written: only regular files and folders, relative paths that stay
inside the destination (no absolute path, no `..`, no link, no device or pipe), and a bound on
the unpacked size (a small archive may expand to fill the disk).
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path, PurePosixPath

from distill.errors import UserError, first_line

# CIFAR-100 unpacks to ~180 MB; 4 GiB leaves room for any data set meant to be held in memory.
MAX_UNPACKED_BYTES = 4 << 30


def _refusal(member: tarfile.TarInfo) -> str | None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")):
        return "an absolute path"
    if ".." in name.parts:
        return "a path that leaves the folder (..)"
    if member.issym() or member.islnk():
        return f"a link to {member.linkname!r}"
    if not (member.isfile() or member.isdir()):
        return "a device, pipe or other special file"
    return None


def extract_tar(archive: Path, dest: Path) -> None:
    """Unpack `archive` under `dest`, or refuse it whole (nothing written) naming the first
    member that is not a plain file or folder inside `dest`."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            total = 0
            for m in members:
                why = _refusal(m)
                if why is not None:
                    raise UserError(
                        f"{archive} holds {m.name!r}, {why}; refusing to unpack it: delete the "
                        "archive and download it again, or pass a local folder as --data"
                    )
                total += m.size
            if total > MAX_UNPACKED_BYTES:
                raise UserError(
                    f"{archive} unpacks to {total / 2**30:.1f} GiB, more than the "
                    f"{MAX_UNPACKED_BYTES / 2**30:.0f} GiB a data archive may; delete it"
                )
            root = dest.resolve()
            for m in members:
                target = (root / m.name).resolve()
                if not target.is_relative_to(root):  # through a folder that is a link already
                    raise UserError(f"{archive} member {m.name!r} would land outside {root}")
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(
            f"could not unpack {archive} ({type(e).__name__}: {first_line(e, 80)}); delete it and "
            "download it again"
        ) from None
