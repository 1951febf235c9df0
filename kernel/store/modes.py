"""Who may read what a store writes to disk: its owner only, unless the user shares a directory.

A session's store holds every cell's code, outputs and pickled values, so the
files are created owner-only (directories 0700, files 0600) whatever the
umask: modes are set explicitly (``os.open``/``mkdir`` modes, then ``chmod``,
since a umask can only take bits away and some file systems ignore the mode
argument). SQLite creates its ``-wal`` and ``-shm`` files with the mode of the
database file, and they are tightened again after it opens.

The http engine's shared blob directory (``PYREPL3_BLOBS``) may be meant for a
group: if the user made that directory group-writable (``chmod 2770``, say),
what PyREPL3 creates under it is group-readable and -writable too
(:meth:`Modes.like`); otherwise it is owner-only as well.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Modes:
    """The permission bits for directories and files created under one root."""

    directory: int = 0o700
    file: int = 0o600

    @classmethod
    def like(cls, root: Path) -> Modes:
        """Owner-only, or group-shared when ``root`` already exists and its group may write it."""
        try:
            bits = root.stat().st_mode
        except OSError:
            return PRIVATE
        return GROUP_SHARED if bits & stat.S_IWGRP and bits & stat.S_IXGRP else PRIVATE

    def make_dirs(self, path: Path) -> None:
        """``mkdir -p`` with this directory mode on every directory it creates (existing ones are left alone)."""
        path = Path(path)
        missing = []
        while not path.exists():
            missing.append(path)
            if path.parent == path:
                break
            path = path.parent
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):
                directory.mkdir(mode=self.directory)
                # Keep a setgid bit inherited from a group-shared parent.
                os.chmod(directory, self.directory | (directory.stat().st_mode & stat.S_ISGID))

    def create_file(self, path: Path) -> None:
        """Create ``path`` empty with this file mode, if it does not exist."""
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.file))
            os.chmod(path, self.file)

    def tighten(self, *paths: Path) -> None:
        """Take away what this mode does not grant from files this user owns (a no-op for others' files)."""
        for path in paths:
            with contextlib.suppress(OSError):
                st = os.stat(path)
                if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & ~self.file & 0o777:
                    os.chmod(path, stat.S_IMODE(st.st_mode) & self.file)


PRIVATE = Modes()
GROUP_SHARED = Modes(directory=0o770, file=0o660)

__all__ = ["GROUP_SHARED", "PRIVATE", "Modes"]
