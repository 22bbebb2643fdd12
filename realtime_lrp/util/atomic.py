"""Outputs that appear only when complete: written beside the target, then moved into place.

Every file the tool writes (videos, PNGs, the contact sheet, exports, bench JSON,
training checkpoints) goes first to ``NAME.partial.EXT`` in the target's folder, so the
same filesystem, and is flushed, synced and closed before ``os.replace`` puts it at the
target; the folder is then synced too, so that after a power loss the rename itself is not
lost (POSIX keeps a rename only once its directory is on the disk). A reader of the target therefore sees the previous file or the new one, never
half of one, and a killed run leaves only the ``.partial`` file, whose name says what
it is. The extension stays last so that tools which pick a format by it (FFmpeg,
OpenCV, image viewers) still recognise the partial file.
"""
from __future__ import annotations

import errno
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


class OutputError(RuntimeError):
    """An output could not be written; the message is one line naming the file."""


def partial_path(target: str | Path) -> Path:
    """``out.mp4`` → ``out.partial.mp4``: where ``target`` is written until it is complete."""
    target = Path(target)
    return target.with_name(f"{target.stem}.partial{target.suffix}")


def reason(error: OSError) -> str:
    """The short system reason of an OSError (``No space left on device``)."""
    return error.strerror or str(error) or type(error).__name__


def make_parent(target: str | Path) -> None:
    """Create ``target``'s folder, or raise a one-line :class:`OutputError`."""
    folder = Path(target).parent
    blocking = next((f for f in (folder, *folder.parents) if f.exists() and not f.is_dir()), None)
    if blocking is not None:
        raise OutputError(f"cannot write {target}: {blocking} is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the folder for {target}: {reason(error)}") from None


def check_writable(target: str | Path) -> None:
    """Fail early, in one line, if ``target`` could not be written (before hours of work, not after)."""
    target = Path(target)
    make_parent(target)
    if target.is_dir():
        raise OutputError(f"cannot write {target}: it is a folder")
    probe = target.parent / f".{target.name}.rtlrp-write-test"
    try:
        probe.touch()
    except OSError as error:
        raise OutputError(f"cannot write {target}: {reason(error)}") from None
    remove(probe)


def sync(path: Path) -> None:
    """Flush a closed file's data to the disk, so a rename cannot expose an empty file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk; a no-op where folders cannot be
    opened (Windows) or synced (some network filesystems say EINVAL)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def commit(partial: Path, target: Path) -> None:
    """Sync ``partial``, move it over ``target`` in one atomic step, then sync the folder."""
    try:
        sync(partial)
        os.replace(partial, target)
        sync_folder(Path(target).parent)
    except OSError as error:
        raise OutputError(f"cannot write {target}: {reason(error)}") from None


def remove(path: Path) -> None:
    """Delete ``path`` if it is there; a failure to delete is not worth a second error."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


@contextmanager
def replacing(target: str | Path) -> Iterator[Path]:
    """Yield the partial path to write ``target`` to; on success it replaces ``target``.

    If the body raises (or is interrupted), the partial file is removed and ``target``
    is left as it was. An ``OSError`` from the body becomes a one-line :class:`OutputError`.
    """
    target = Path(target)
    make_parent(target)
    partial = partial_path(target)
    try:
        yield partial
        commit(partial, target)
    except OSError as error:
        remove(partial)
        raise OutputError(f"cannot write {target}: {reason(error)}") from None
    except BaseException:
        remove(partial)
        raise


def write_bytes(target: str | Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with replacing(target) as partial:
        with open(partial, "wb") as fh:
            fh.write(data)


def write_text(target: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``target`` atomically."""
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, value: Any) -> None:
    """Write ``value`` as indented JSON ending in a newline to ``target`` atomically (serialised first,
    so a value that cannot be written leaves ``target`` as it was)."""
    write_text(target, json.dumps(value, indent=2) + "\n")


def write_with(target: str | Path, save: Callable[[Path], None]) -> None:
    """Let ``save(path)`` write the file (``torch.save``, ...), then move it to ``target``."""
    with replacing(target) as partial:
        save(partial)


def write_image(target: str | Path, image) -> None:
    """Encode ``image`` (an OpenCV array) by ``target``'s extension and write it atomically."""
    import cv2

    target = Path(target)
    try:
        ok, encoded = cv2.imencode(target.suffix or ".png", image)
    except cv2.error:
        ok = False
    if not ok:
        raise OutputError(f"cannot write {target}: OpenCV cannot encode a {target.suffix or 'file'} image")
    write_bytes(target, encoded.tobytes())


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` are one file (same device and inode: hard links count too)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
