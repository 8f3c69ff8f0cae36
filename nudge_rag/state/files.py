"""Files that a kill can never leave cut: every file nudge-rag writes is replaced atomically.

One mechanism, :func:`atomic_path`: the writer writes a temporary file in the target's folder,
which is then flushed to disk (fsync), renamed over the target (``os.replace``, atomic on POSIX
and Windows) and the folder's entry is fsynced too. A reader, or a process that restarts after a
SIGKILL or a power cut, sees the old file or the new one, never a mix or an empty file. A kill
may leave a hidden ``.NAME.*.tmp`` file beside the target, which is safe to delete.

Built on it:

- :func:`atomic_write`: bytes or text to a file.
- :func:`persist_atomic`: a store's ``persist(path)`` (LlamaIndex's ``SimpleVectorStore``
  truncates its JSON file and then writes it, so a kill in between wipes every vector).
- :func:`save_faiss_atomic`: LangChain FAISS's ``save_local`` pair (``index.faiss`` and
  ``index.pkl``), switched as a pair: a load sees both files of one save, never one of each.

The core imports no framework: the stores are called through their own methods.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nudge_rag.errors import BadInputError

try:  # POSIX only; elsewhere concurrent FAISS saves are not serialised between processes
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_path", "atomic_write", "fsync_dir", "persist_atomic", "save_faiss_atomic"]

_GEN = re.compile(r"^g(\d{6,})$")


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush the entries of ``folder`` (a rename in it) to disk, where the OS allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDWR)
    except PermissionError:  # a read-only file: fsync works on a read descriptor on POSIX
        fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    """A fresh, unguessable name beside ``path`` that keeps its suffix (writers infer formats)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it atomically replaces ``path``.

    The body writes (and closes) the file at the yielded path. Then the file is fsynced, given
    its mode, renamed over ``path`` and the folder is fsynced. On an exception the temporary file
    is removed and ``path`` is untouched. If the body wrote nothing, ``path`` is left as it is.

    Args:
        path: the file to replace (its folder is created if missing). A symlink at ``path`` is
            itself replaced, as ``rename`` does, not the file it points to.
        mode: permission bits of the result (e.g. ``0o600``). None keeps the mode of the file
            being replaced, or, for a new file, the mode the writer created it with.

    Example:
        .. code-block:: python

            with atomic_path("plot.png") as tmp:
                fig.savefig(tmp)
    """
    target = Path(path)
    if target.is_dir() and not target.is_symlink():
        msg = f"path: {str(target)!r} is a folder, expected a file path to write; pick a file name."
        raise BadInputError(msg)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    try:
        yield tmp
        if not tmp.exists():
            return
        _fsync_file(tmp)
        if mode is None:
            with contextlib.suppress(FileNotFoundError):
                mode = stat.S_IMODE(target.stat().st_mode)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str,
    *,
    mode: int | None = None,
    encoding: str = "utf-8",
) -> None:
    """Replace the file ``path`` with ``data`` atomically (see :func:`atomic_path` for ``mode``)."""
    raw = data.encode(encoding) if isinstance(data, str) else bytes(data)
    with atomic_path(path, mode=mode) as tmp, open(tmp, "xb") as fh:
        fh.write(raw)


def _is_local(fs: Any) -> bool:
    """Whether an fsspec filesystem (or None: the local one) writes to this machine's disk."""
    if fs is None:
        return True
    protocol = getattr(fs, "protocol", None)
    protocols = {protocol} if isinstance(protocol, str) else set(protocol or ())
    return bool(protocols & {"file", "local"})


def persist_atomic(
    persist: Callable[[str], None],
    path: str | os.PathLike[str],
    *,
    fs: Any = None,
    mode: int | None = None,
) -> None:
    """Run ``persist(p)`` (a store writing one file at ``p``) so that ``path`` is replaced whole.

    On the local disk (``fs`` None or a local fsspec filesystem) ``persist`` writes a temporary
    file beside ``path``, which then atomically replaces it (:func:`atomic_path`); a ``persist``
    that writes nothing (a store kept elsewhere, e.g. Chroma) leaves ``path`` untouched. On any
    other fsspec filesystem ``persist(path)`` runs as it is: the file is then as whole as that
    filesystem makes a closed file (object stores such as S3 or GCS publish an object whole, on
    close; a network share may show a cut file after a crash).

    Example:
        .. code-block:: python

            persist_atomic(simple_vector_store.persist, "storage/vector_store.json")
    """
    text = os.fspath(path)
    if not _is_local(fs):
        persist(text)
        return
    if text.startswith("file://"):
        text = text[len("file://") :]
    with atomic_path(text, mode=mode) as tmp:
        persist(str(tmp))


# -- FAISS -------------------------------------------------------------------------------------
@contextmanager
def _locked(lockfile: Path) -> Iterator[None]:
    with open(lockfile, "a+b") as fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _gens(meta: Path) -> list[int]:
    out = []
    for p in meta.iterdir():
        m = _GEN.match(p.name)
        if m and p.is_dir() and not p.is_symlink():
            out.append(int(m.group(1)))
    return sorted(out)


def _point(link: Path, target: str) -> None:
    """Make ``link`` a symlink to ``target`` in one atomic step (a temp link renamed over it)."""
    tmp = _temp_name(link)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _new_gen(meta: Path, fill: Callable[[Path], None]) -> str:
    """A new, complete, fsynced generation folder ``gNNNNNN`` filled by ``fill(folder)``."""
    name = f"g{(max(_gens(meta), default=0) + 1):06d}"
    tmp = meta / f"{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    fill(tmp)
    for f in tmp.iterdir():
        _fsync_file(f)
    fsync_dir(tmp)
    os.replace(tmp, meta / name)
    fsync_dir(meta)
    return name


def _link_pair(folder: Path, meta: Path, names: list[str]) -> None:
    """Turn ``folder/<name>`` into links through ``meta/current`` (once per folder).

    A plain pair already there (an earlier ``save_local``) is first kept as a generation and
    made current, so each file switches to a link to its own bytes: a load during the switch
    still sees that pair. Without a pair, the links dangle until the first ``current`` exists.
    """
    files = [folder / n for n in names]
    if not (meta / "current").exists() and all(f.is_file() and not f.is_symlink() for f in files):

        def keep(dst: Path) -> None:
            for f in files:
                try:
                    os.link(f, dst / f.name)
                except OSError:  # no hard links here: copy
                    shutil.copy2(f, dst / f.name)

        _point(meta / "current", _new_gen(meta, keep))
        fsync_dir(meta)
    for f in files:
        _point(f, f"{meta.name}/current/{f.name}")
    fsync_dir(folder)


def save_faiss_atomic(
    store: Any, folder: str | os.PathLike[str], index_name: str = "index"
) -> Path:
    """Save a LangChain ``FAISS`` store so that a kill never leaves a cut or mixed pair.

    ``FAISS.save_local`` writes ``index.faiss`` and then ``index.pkl`` in place; a kill
    in between leaves a cut file, or the vectors of one save with the documents of another.
    Here each save goes, whole and fsynced, into a new generation folder, and one symlink,
    replaced atomically, makes it current::

        folder/index.faiss -> .index.nudge/current/index.faiss
        folder/index.pkl   -> .index.nudge/current/index.pkl
        folder/.index.nudge/current -> g000007      (the previous generation is kept too)

    so ``FAISS.load_local(folder, embeddings, index_name)`` reads the pair as before and always
    gets both files of one save. A folder holding a plain ``save_local`` pair is switched over
    without a moment where a load would fail. Where symlinks cannot be made (Windows without the
    privilege), each file is replaced atomically on its own, ``.faiss`` first: a kill between the
    two replaces pairs new vectors with the previous documents, which matters only if documents
    were added or deleted since that save (a nudge changes vectors only).

    Args:
        store: a LangChain ``FAISS`` store (anything with ``save_local(folder, index_name)``).
        folder: the folder to load from later; created if missing.
        index_name: the file stem, as for ``save_local``.

    Returns:
        The generation folder now current (or ``folder`` when symlinks are unavailable).
    """
    save = getattr(store, "save_local", None)
    if not callable(save):
        msg = (
            f"store: found {type(store).__name__} without save_local(folder, index_name); pass "
            "a langchain_community FAISS store."
        )
        raise BadInputError(msg)
    if not index_name or os.sep in index_name or index_name.startswith("."):
        msg = f"index_name: found {index_name!r}, expected a plain file stem such as 'index'."
        raise BadInputError(msg)
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    meta = root / f".{index_name}.nudge"
    meta.mkdir(exist_ok=True)
    names = [f"{index_name}.faiss", f"{index_name}.pkl"]
    with _locked(meta / "lock"):
        for stale in meta.glob("g*.tmp"):  # a save killed half-way
            shutil.rmtree(stale, ignore_errors=True)
        try:
            if any(
                not (root / n).is_symlink() or os.readlink(root / n) != f"{meta.name}/current/{n}"
                for n in names
            ):
                _link_pair(root, meta, names)
            linked = True
        except (OSError, NotImplementedError):  # no symlinks here
            linked = False
        gen = _new_gen(meta, lambda d: save(str(d), index_name))
        if not linked:  # replace file by file
            for n in names:
                os.replace(meta / gen / n, root / n)
            fsync_dir(root)
            for num in _gens(meta):
                shutil.rmtree(meta / f"g{num:06d}", ignore_errors=True)
            return root
        _point(meta / "current", gen)
        fsync_dir(meta)
        keep = {gen, os.readlink(meta / "current")}
        gens = [f"g{num:06d}" for num in _gens(meta)]
        if len(gens) > 1:
            keep.add(gens[gens.index(gen) - 1])  # the previous one: a reader may be loading it
        for name in gens:
            if name not in keep:
                shutil.rmtree(meta / name, ignore_errors=True)
    return meta / gen
