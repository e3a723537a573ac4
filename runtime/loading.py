"""Loading the function's code, caching its compiled bytecode, and describing clearly why it could not be loaded.

The detail names the file and line for syntax errors, the missing module for import errors, and the manifest
field for a missing or non-callable handler, because it is shown verbatim to the caller (502 `init_failed`) and
in `nest describe`.

Bytecode. A package in the node cache (`<cache>/<xx>/<digest>`, `runtime/unpack.py`) is read-only and its instances
run with `PYTHONDONTWRITEBYTECODE`, so every cold start compiled the function's modules again (bench_code_fetch's
handler, 5 generated modules: ~26 ms of its import). A package's compiled code never changes (the digest names its
content), so the first start on a node writes it to the package's *sidecar*, `<cache>/<xx>/<digest>.pyc/`
(`sidecar_for`), and later starts load it. bench_bytecode, 160 generated modules (2.4 MB of source, 6.4 MB of pycs),
medians of 9: importing them all took 769 ms (tree) and 759 ms (archive) compiling, 113 ms loading the pycs (6.8x
and 6.7x faster); what is left is mostly running the module bodies (reading and unmarshalling every pyc alone is
~25-35 ms).

The first start writes the pycs from a thread (`BytecodeCache._enqueue`), one at a time, while the imports go on:
written inline, they cost that start +29-48% (creating a file on this machine's shared ext4 took ~1 ms, 150-170 ms
for the 160), from the thread +5-7%, and the last pyc is on disk ~20-30 ms after the imports end. The thread ends
when nothing is left to write; if it cannot start (the memory limit), the pyc is written inline.

Why not `sys.pycache_prefix`: it is process-wide and needs `dont_write_bytecode` off, so the stdlib's and
site-packages' modules would be written into the function's sidecar too, and with it set Python ignores the
`__pycache__` beside their sources: five stdlib modules (`decimal`, `pydoc`, ...) imported in 387 ms instead of 62
(measured here). The cache here serves only the package's own `.py` files: a path hook for the tree layout
(`install_tree`; every other `sys.path` entry keeps Python's finder), `ArchiveFinder`'s loader for the archive
(`runtime/archive.py`). It writes whatever `PYTHONDONTWRITEBYTECODE` says: that keeps `__pycache__` out of the
read-only tree and site-packages, and the sidecar is the one place meant for pycs.

Format: one flat directory, one file per source (`a/b/c.py` -> `a%2Fb%2Fc.pyc`), each the standard pyc header
(the interpreter's `MAGIC_NUMBER`, flags 0, mtime 0, the source's size) and the marshalled code. Flat so that the
directory's mtime changes with every pyc added: the janitor (`controller/codestore/cachejanitor.py`) re-measures
a sidecar only then. The source is not hashed: its digest already fixes it, so the size check only guards
against a mix-up; a pyc with another magic number (another interpreter), a short or unreadable one is ignored
and replaced.

Writing never fails an import: any `OSError` (read-only or full disk, a name too long) leaves the module compiled
and the cache as it was (an instance killed mid-write leaves a temporary file, deleted with the sidecar). Each
pyc is written to a temporary name and renamed into place, so two instances writing the same one at once each
leave a complete file, and a reader sees a whole pyc or none. The sidecar is
writable by instances as the package is (they materialise it), so it asks no more trust of them.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import itertools
import marshal
import os
import sys
import threading
import traceback
from types import CodeType
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from collections.abc import Callable

TRACEBACK_MAX = 8 * 1024


class LoadError(Exception):
    """The code could not be loaded; reported on the status pipe and to callers."""

    def __init__(self, error_type: str, detail: str, traceback: str) -> None:
        super().__init__(f"{error_type}: {detail}")
        self.error_type = error_type
        self.detail = detail
        self.traceback = traceback

    def as_status(self) -> dict[str, str]:
        return {
            "event": "init_failed",
            "error_type": self.error_type,
            "detail": self.detail,
            "traceback": self.traceback,
        }


def _where(exc: BaseException, code_dir: str) -> str:
    """`(main.py, line 3)`: the innermost frame inside the function's own code."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" ({exc.filename.removeprefix(code_dir).lstrip('/')}, line {exc.lineno})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(code_dir)]
    if frames:
        return f" ({frames[-1].filename.removeprefix(code_dir).lstrip('/')}, line {frames[-1].lineno})"
    return ""


def load_handler(code_dir: str, handler: str, *, style: str, bytecode: bool = False) -> Any:
    """Import `module:attribute` from `code_dir`; raise `LoadError` with a clear detail on any failure.

    `bytecode`: `code_dir` is a package in the node cache; its modules' bytecode is cached in its sidecar
    (the module docstring). Not for a plain directory, whose sidecar would land beside the user's sources."""
    module_name, _, attribute = handler.partition(":")
    if bytecode:
        install_tree(code_dir, sidecar_for(code_dir))
    sys.path.insert(0, code_dir)
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        detail = (exc.msg if isinstance(exc, SyntaxError) else str(exc)) + _where(exc, code_dir)
        raise LoadError(type(exc).__name__, detail, traceback.format_exc()[-TRACEBACK_MAX:]) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise LoadError(
                "AttributeError",
                f"module {module_name!r} has no attribute {part!r} (handler {handler!r}; check nest.yaml handler)",
                "",
            )
        target = getattr(target, part)
    if not callable(target):
        raise LoadError(
            "TypeError",
            f"{handler!r} is a {type(target).__name__}, not a callable (check nest.yaml handler)",
            "",
        )
    if style == "lambda" and len(_positional(target)) < 2 and not _has_varargs(target):
        raise LoadError("TypeError", f"{handler!r} must take (event, context) for handler_style lambda", "")
    return target


def _positional(target: Any) -> list[inspect.Parameter]:
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return [inspect.Parameter("a", inspect.Parameter.POSITIONAL_ONLY)] * 2
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p for p in parameters if p.kind in kinds]


def _has_varargs(target: Any) -> bool:
    try:
        return any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return True


def is_async(target: Any) -> bool:
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(type(target).__call__)


SIDECAR_SUFFIX = ".pyc"
"""`<digest>.pyc` beside `<digest>`; `controller/codestore/cachejanitor.py` has the same constant (the controller
may not import the runtime), and a unit test checks they agree."""
_HEADER = 16
_counter = itertools.count()


def sidecar_for(code_dir: str) -> str:
    """Where the bytecode of the package at `code_dir` is cached."""
    return code_dir.rstrip(os.sep) + SIDECAR_SUFFIX


def pyc_name(relative: str) -> str:
    """`a/b/c.py` -> `a%2Fb%2Fc.pyc`: flat and unambiguous (`%` itself is escaped first)."""
    return relative.replace("%", "%25").replace("/", "%2F") + "c"


def header(size: int) -> bytes:
    return importlib.util.MAGIC_NUMBER + bytes(8) + (size & 0xFFFFFFFF).to_bytes(4, "little")


class BytecodeCache:
    """One package's sidecar. Counts what it did, so tests see a pyc was used without timing anything."""

    def __init__(self, sidecar: str) -> None:
        self.sidecar = sidecar
        self.loaded = 0
        """Modules whose code came from a pyc."""
        self.compiled = 0
        self.written = 0
        self._writable: bool | None = None
        """Whether the sidecar directory exists or could be made; asked once, so that a read-only cache costs
        one failed `mkdir` per start, not one per module plus marshalling each module's code for nothing."""
        self._pending: list[tuple[str, bytes]] = []
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def code(self, relative: str, filename: str, size: int, source: Callable[[], bytes]) -> CodeType:
        """The code of the package file `relative` (`size` bytes, its text from `source()` if it must be compiled),
        from its pyc if valid, else compiled and cached."""
        path = os.path.join(self.sidecar, pyc_name(relative))
        cached = self._read(path, size)
        if cached is not None:
            self.loaded += 1
            return relocated(cached, filename)
        data = source()
        code = compile(data, filename, "exec", dont_inherit=True)
        self.compiled += 1
        if self._writable is None:
            self._writable = _made(self.sidecar)
        if self._writable:
            self._enqueue(path, header(len(data)) + marshal.dumps(code))
        return code

    def flush(self) -> None:
        """Wait until every pyc handed to the writer is written (tests, benchmarks)."""
        while (writer := self._writer) is not None:
            writer.join()

    def _enqueue(self, path: str, data: bytes) -> None:
        """Hand the pyc to the writer thread, started if none runs; written here if no thread can start."""
        if self._pid != os.getpid():  # forked by the function's code: the parent's writer and lock are not ours
            self._pending, self._writer, self._lock, self._pid = [], None, threading.Lock(), os.getpid()
        with self._lock:
            self._pending.append((path, data))
            if self._writer is not None:
                return
            writer = threading.Thread(target=self._drain, name="nest-bytecode", daemon=True)
            try:
                writer.start()
            except RuntimeError:  # no thread under the memory limit: write it now
                self._pending.pop()
                write = True
            else:
                self._writer, write = writer, False
        if write:
            self._write(path, data)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._writer = None
                    return
                path, data = self._pending.pop(0)
            self._write(path, data)

    def _read(self, path: str, size: int) -> CodeType | None:
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError:
            return None
        if len(data) < _HEADER or data[:_HEADER] != header(size):
            return None
        try:
            code = marshal.loads(memoryview(data)[_HEADER:])
        except (ValueError, EOFError, TypeError):
            return None
        return code if isinstance(code, CodeType) else None

    def _write(self, path: str, data: bytes) -> None:
        temporary = f"{os.path.dirname(path)}/.{os.getpid()}-{next(_counter)}.tmp"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                if os.write(descriptor, data) != len(data):  # a short write is a full disk: no partial pyc
                    raise OSError("short write")
            finally:
                os.close(descriptor)
            os.rename(temporary, path)
            self.written += 1
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def _made(directory: str) -> bool:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return False
    return True


def relocated(code: CodeType, filename: str) -> CodeType:
    """`code` naming `filename` in tracebacks, as CPython's own loader does for a pyc compiled elsewhere (the data
    directory moved): nothing is copied when the name is already right, the usual case."""
    if code.co_filename == filename:
        return code
    consts = tuple(relocated(c, filename) if isinstance(c, CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


class TreeSourceLoader(importlib.machinery.SourceFileLoader):
    """The loader of a tree package's `.py` files: code through the package's `BytecodeCache`."""

    cache: ClassVar[BytecodeCache]
    code_dir: ClassVar[str]

    def get_code(self, fullname: str) -> CodeType:
        path = self.get_filename(fullname)
        relative = os.path.relpath(path, self.code_dir)
        return self.cache.code(relative, path, os.stat(path).st_size, lambda: self.get_data(path))


def install_tree(code_dir: str, sidecar: str) -> BytecodeCache:
    """Put a path hook first on `sys.path_hooks` whose finders serve `code_dir` and the directories under it with
    the cache; every other `sys.path` entry keeps Python's own finder (and its `__pycache__`)."""
    cache = BytecodeCache(sidecar)
    loader = type("TreeSourceLoader", (TreeSourceLoader,), {"cache": cache, "code_dir": code_dir})
    details = (
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
        (loader, importlib.machinery.SOURCE_SUFFIXES),
        (importlib.machinery.SourcelessFileLoader, importlib.machinery.BYTECODE_SUFFIXES),
    )
    prefix = code_dir.rstrip(os.sep) + os.sep

    def hook(path: str) -> importlib.machinery.FileFinder:
        if path != code_dir and not path.startswith(prefix):
            raise ImportError("not the function's code")
        return importlib.machinery.FileFinder(path, *details)

    sys.path_hooks.insert(0, hook)
    for entry in [p for p in sys.path_importer_cache if p == code_dir or p.startswith(prefix)]:
        del sys.path_importer_cache[entry]
    return cache
