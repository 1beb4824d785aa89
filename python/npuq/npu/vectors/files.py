"""Safe file access for vector sets and dumps: paths that stay inside their folder, writes that never
follow a link, and the staged, atomic replacement of an output folder (``--force`` replaces only a
vector set's own files)."""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from npuq._untrusted import inside
from npuq.npu.vectors.formats import (
    MANIFEST_NAME,
    VECTORS_FORMAT,
    GoldenVectorsError,
    VectorsError,
    _read_manifest,
)


# ====================================================================================== safe file access
def _safe_path(root: Path, rel: Any, where: str) -> Path:
    """``root / rel`` for a manifest path; absolute paths and ``..`` would leave the vector directory."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        raise GoldenVectorsError(f"{where}: file path {rel!r} is not a relative path inside the vector directory")
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise GoldenVectorsError(f"{where}: file path {rel!r} is not a relative path inside the vector directory")
    return root.joinpath(*parts)


def _write_file(root: Path, rel: str, data: bytes) -> None:
    """Write a new file ``root/rel``; it must not exist yet and must land inside ``root`` (no link on the
    way leads out: writing never goes through a symlink)."""
    path = _safe_path(root, rel, str(root))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not inside(os.path.realpath(path.parent), os.path.realpath(root)):
        raise VectorsError(f"{path}: would be written outside {root} (through a link); refusing")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    with os.fdopen(os.open(path, flags, 0o666), "wb") as f:
        f.write(data)


def _remove_tree(path: Path) -> None:
    """Remove a directory tree, best effort, never following a symlink: a link is removed itself and
    what it points to is not touched (an old vector set may hold links to directories outside it)."""
    try:
        if os.path.islink(path) or not os.path.isdir(path):
            os.unlink(path)
            return
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    _remove_tree(Path(entry.path))
                else:
                    os.unlink(entry.path)
        os.rmdir(path)
    except OSError:
        pass


# ------------------------------------------------------------------------------ the output directory
@dataclass
class _Target:
    """Where a vector set or a dump goes: the resolved directory, and whether it holds a previous
    vector set to replace (``--force``)."""

    path: Path
    shown: str  # as the user wrote it, for messages
    replace: bool


def _output_target(outdir: Path, overwrite: bool, what: str = "vector set") -> _Target:
    """Check ``outdir`` before anything is computed: new or empty, or (``overwrite``) a previous vector
    set holding nothing else. A link to a directory is followed once, here: everything else works on
    the resolved path."""
    real = Path(os.path.realpath(outdir))
    if real.parent == real:
        raise VectorsError(f"{outdir}: cannot write a {what} in place of the file-system root")
    if os.path.lexists(real) and not real.is_dir():
        raise VectorsError(f"{outdir}: exists and is not a directory")
    try:
        empty = not real.exists() or not any(real.iterdir())
    except OSError as exc:
        raise VectorsError(f"{outdir}: cannot list the directory ({exc.strerror or exc})") from None
    if empty:
        return _Target(real, str(outdir), replace=False)
    if not overwrite:
        hint = " or overwrite a previous vector set (overwrite=True, --force)" if what == "vector set" else ""
        raise VectorsError(f"{outdir}: the directory is not empty; choose a new one{hint}")
    _check_previous_set(real, str(outdir))
    return _Target(real, str(outdir), replace=True)


def _check_previous_set(real: Path, shown: str) -> None:
    """A directory may be replaced only if it holds a vector set (of any format version) and nothing but
    its files: the manifest, the files it lists, their folders, and links (which are removed themselves,
    never followed). Anything else is someone's file: refuse."""
    try:
        old, fmt = _read_manifest(real, VectorsError)
        if old is None:
            raise VectorsError(f"no {MANIFEST_NAME}")
        if fmt != VECTORS_FORMAT:
            raise VectorsError(f"format {fmt!r} is not {VECTORS_FORMAT!r}")
    except VectorsError as exc:
        raise VectorsError(
            f"{shown}: not empty and holds no readable {MANIFEST_NAME} of a previous vector set "
            f"({exc}); refusing to overwrite it"
        ) from None
    foreign = _foreign_files(real, {MANIFEST_NAME} | _listed_paths(old))
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise VectorsError(
            f"{shown}: holds {', '.join(foreign[:5])}{more}, which the previous vector set's "
            f"{MANIFEST_NAME} does not list; refusing to replace the directory (move them first)"
        )


def _listed_paths(manifest: Any) -> set[str]:
    """The file paths a (possibly old or damaged) manifest lists: every ``path`` of an object that also
    has a ``crc32`` (an op's ``path`` is a torch module name, not a file). Iterative: any depth."""
    paths, stack = set(), [manifest]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            if isinstance(obj.get("path"), str) and "crc32" in obj:
                paths.add(str(PurePosixPath(obj["path"])))
            stack.extend(obj.values())
        elif isinstance(obj, list):
            stack.extend(obj)
    return paths


def _foreign_files(real: Path, ours: set[str]) -> list[str]:
    """The entries under ``real`` that are not ``ours`` (relative paths), without following links."""
    foreign, stack = [], [("", real)]
    while stack:
        prefix, directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                rel = prefix + entry.name
                if entry.is_symlink():
                    continue  # removed as a link; what it points to is never touched
                if entry.is_dir(follow_symlinks=False):
                    stack.append((rel + "/", Path(entry.path)))
                elif not (entry.is_file(follow_symlinks=False) and rel in ours):
                    foreign.append(rel)
    return sorted(foreign)


def _fresh_sibling(target: Path, tag: str) -> Path:
    """An unused hidden name next to ``target`` (same file system: a rename there is atomic)."""
    for _ in range(100):
        candidate = target.parent / f".{target.name}.{tag}-{secrets.token_hex(4)}"
        if not os.path.lexists(candidate):
            return candidate
    raise VectorsError(f"{target}: no free temporary name next to it")


@contextlib.contextmanager
def _staging(target: _Target):
    """A new directory next to the target to write into; removed again if writing fails, so that a
    failed export leaves neither a half-written set nor anything that blocks the next export."""
    target.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        stage = _fresh_sibling(target.path, "partial")
        try:
            stage.mkdir()
            break
        except FileExistsError:  # taken in between: draw another name
            continue
    else:
        raise VectorsError(f"{target.shown}: no free temporary name next to it")
    try:
        yield stage
    except BaseException:
        _remove_tree(stage)
        raise


def _install(stage: Path, target: _Target) -> None:
    """Move the finished ``stage`` into place with renames: the target directory is either the old one
    or the complete new one, never a mixture."""
    real = target.path
    if not target.replace:
        try:
            if real.is_dir():
                real.rmdir()  # empty when checked; a file written there since is not overwritten
            os.rename(stage, real)
        except OSError as exc:
            raise VectorsError(
                f"{target.shown}: cannot move the new files into place ({exc.strerror or exc})"
            ) from None
        return
    _check_previous_set(real, target.shown)  # again: the emulation may have taken a while
    aside = _fresh_sibling(real, "old")
    os.rename(real, aside)
    try:
        os.rename(stage, real)
    except BaseException:
        os.rename(aside, real)
        raise
    _remove_tree(aside)
