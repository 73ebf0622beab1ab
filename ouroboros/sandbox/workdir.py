"""The sandbox's workdir on the host: the one host directory a sandboxed program sees.

Every backend (bwrap, docker, process) mounts or enters a `HostWorkdir`. It lives until the
sandbox is reset (a new experiment) or cleaned up, so files persist across the execs of one
experiment, and `write_file` / `read_file` are plain host file operations.

- **Written data is capped.** As root, the workdir is its own tmpfs mount with `size=` the
  limit, so a disk-fill stops at the cap (ENOSPC) and never touches the host's disk. Without
  root only the per-file RLIMIT_FSIZE applies (a declared difference, see `traits.py`).
- **The program controls the directory**, and the harness may be root. Host-side file access
  therefore walks each path component with O_NOFOLLOW relative to the workdir's fd, and
  replaces rather than writes through an existing file, so a symlink or hard link the program
  planted cannot make the harness read or overwrite a host file.
- **Leftovers are findable.** Workdirs live under `ROOT/<owner>/`, where the owner token names
  the process that made them; `reaper.py` removes those of dead owners.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import re
import secrets
import shutil
import stat
import sys
from pathlib import PurePosixPath

log = logging.getLogger(__name__)

# One root per user: a root made by another user of the machine cannot be ours (see ensure_root).
ROOT = os.environ.get("OUROBOROS_SANDBOX_ROOT",
                      "/tmp/ouroboros-sandbox" if os.geteuid() == 0 else f"/tmp/ouroboros-sandbox-{os.geteuid()}")
MIB = 1 << 20
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8
MS_NOSUID, MS_NODEV = 2, 4
OWNER_NAME = re.compile(r"^\d+-\d+$")  # what reaper.owner_token() makes; nothing else is ours

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def check_path(name: str) -> str:
    """A plain relative path inside the workdir, or ValueError."""
    path = PurePosixPath(name) if isinstance(name, str) else None
    if path is None or not name or path.is_absolute() or "\0" in name or any(
        part in ("", ".", "..") for part in path.parts
    ):
        raise ValueError(f"sandbox file name must be a plain relative path, got {name!r}")
    return str(path)


def owner_dir(owner: str) -> str:
    return os.path.join(ROOT, owner)


def ensure_root() -> None:
    """Make ROOT (mode 0711), and refuse one that another user made or that is a symlink:
    the reaper deletes what it finds there."""
    try:
        os.mkdir(ROOT, 0o711)
    except FileExistsError:
        pass
    info = os.lstat(ROOT)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() \
            or info.st_mode & 0o022:
        raise PermissionError(f"sandbox root {ROOT} is not a directory owned by uid {os.geteuid()} and writable "
                              f"only by it; remove it, or set OUROBOROS_SANDBOX_ROOT to a fresh path")


def mount_tmpfs(path: str, size_bytes: int, uid: int, gid: int) -> bool:
    """Mount a size-capped tmpfs on `path`, owned by uid:gid. False where we may not mount."""
    options = f"size={size_bytes},mode=0755,uid={uid},gid={gid}".encode()
    # nosuid, nodev: a set-uid copy the program leaves in its workdir must not run as the
    # sandbox uid for a host user who finds it there.
    if _libc.mount(b"ouroboros-work", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) == 0:
        return True
    err = ctypes.get_errno()
    if err not in (errno.EPERM, errno.EACCES):
        log.warning("could not mount a tmpfs workdir at %s (%s); written data is capped per file only",
                    path, os.strerror(err))
    return False


def unmount(path: str) -> None:
    if _libc.umount2(path.encode(), MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not a mount point
            log.warning("could not unmount sandbox workdir %s: %s", path, os.strerror(err))


def remove_tree(path: str) -> None:
    """Unmount (if mounted) and delete a workdir, whatever modes the program left in it."""
    unmount(path)

    def fix_and_retry(func, target, _exc):
        try:
            os.chmod(os.path.dirname(target), 0o700)
            func(target)
        except OSError:
            pass

    if not os.path.lexists(path):
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=fix_and_retry)
    else:
        shutil.rmtree(path, onerror=fix_and_retry)


class HostWorkdir:
    """One experiment's working directory, owned by the sandbox uid (uid, gid) when given."""

    def __init__(self, owner: str, ids: tuple[int, int] | None, disk_mb: int):
        self.ids = ids
        ensure_root()
        base = owner_dir(owner)
        try:
            os.mkdir(base, 0o711)
        except FileExistsError:
            if os.path.islink(base):
                raise PermissionError(f"sandbox owner directory {base} is a symlink") from None
        self.path = os.path.join(base, secrets.token_hex(8))
        os.mkdir(self.path, 0o755)
        uid, gid = ids if ids is not None else (os.getuid(), os.getgid())
        self.capped = os.geteuid() == 0 and mount_tmpfs(self.path, disk_mb * MIB, uid, gid)
        if ids is not None and not self.capped:
            os.chown(self.path, uid, gid)

    # Host-side access. Every component is opened with O_NOFOLLOW under the workdir's own fd.

    def _open_parent(self, rel: str, create: bool) -> tuple[int, str]:
        parts = PurePosixPath(check_path(rel)).parts
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    if self.ids is not None:
                        os.chown(part, *self.ids, dir_fd=fd, follow_symlinks=False)
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise ValueError(f"sandbox path {rel!r} goes through a symlink or a non-directory") from None
            raise
        return fd, parts[-1]

    def write(self, rel: str, data: str | bytes, mode: int = 0o644) -> None:
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        dirfd, name = self._open_parent(rel, create=True)
        try:
            try:  # replace, never write through: the old entry may be a link the program planted
                os.unlink(name, dir_fd=dirfd)
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                raise ValueError(f"sandbox path {rel!r} is a directory") from None
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dirfd)
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
                if self.ids is not None:
                    os.fchown(fd, *self.ids)
            finally:
                os.close(fd)
        finally:
            os.close(dirfd)

    def read(self, rel: str, max_bytes: int) -> bytes:
        dirfd, name = self._open_parent(rel, create=False)
        try:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise ValueError(f"sandbox path {rel!r} is a symlink") from None
                raise
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or lie
                    raise ValueError(f"sandbox path {rel!r} is not a regular file")
                if info.st_size > max_bytes:
                    raise ValueError(f"sandbox file {rel!r} is {info.st_size} bytes, over the {max_bytes}-byte read cap")
                chunks, size = [], 0
                while size <= max_bytes:
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                return b"".join(chunks)[:max_bytes]
            finally:
                os.close(fd)
        finally:
            os.close(dirfd)

    def unlink(self, rel: str) -> None:
        """Remove one file (not a directory); a missing one is fine."""
        dirfd, name = self._open_parent(rel, create=False)
        try:
            os.unlink(name, dir_fd=dirfd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dirfd)

    def remove(self) -> None:
        remove_tree(self.path)
