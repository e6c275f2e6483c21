"""Where the compiled kernels are cached on disk, so that no install can strand them.

Numba's ``cache=True`` writes beside the source, in ``kernels/__pycache__``, whenever that
folder is writable. For an installed package that folder is inside site-packages, which pip
does not own: ``pip uninstall`` (and the switch to ``pip install -e``) removes the package's
own files but leaves the cache files, and the leftover ``fastnewton/`` folder then imports as
an empty namespace package that hides the real one (measured: 22 files after one solve; the
next ``import fastnewton`` had no ``solve``).

So an installed fastnewton caches its kernels in a per-user cache folder instead
(``~/.cache/fastnewton`` on Linux, ``~/Library/Caches/fastnewton`` on macOS,
``%LOCALAPPDATA%\\fastnewton\\Cache`` on Windows; one sub-folder per installed copy, named
after its path). A source checkout keeps Numba's default (``kernels/__pycache__``, ignored by
git). ``NUMBA_CACHE_DIR``, when set, wins everywhere, as Numba documents. Only fastnewton's own
kernels are affected: every other function keeps Numba's usual locations.

Wherever they are cached, a kernel's cached code is fresh only while **every** kernel source file is
unchanged (``kernels_stamp``), not only its own file as Numba checks: a kernel compiles the helpers it
calls from other kernel files into its own code, so after ``git pull`` (or a branch switch) under an
editable install changed a helper's file alone, Numba loaded the callers' stale code (seen: a stale
caller read an array the new helper no longer filled, out of bounds). Any kernel file changing makes
every kernel compile again, once.
"""
import contextlib
import functools
import hashlib
import logging
import pathlib
import threading

import numba
from numba.core import caching, event
from numba.misc.appdirs import AppDirs



def _kernels_dir():
    """Where ``fastnewton.kernels`` was loaded from: fastnewton/kernels (installed) or ../kernels (source tree)."""
    import sys

    module = sys.modules.get(__package__ + ".kernels")
    if module is not None and getattr(module, "__file__", None):
        return pathlib.Path(module.__file__).resolve().parent
    return pathlib.Path(__file__).resolve().parent / "kernels"


def installed_layout(kernels_dir):
    """True when the kernels live inside the package folder (an install), not beside it (a source tree)."""
    kernels_dir = pathlib.Path(kernels_dir).resolve()
    return kernels_dir.parent.name == "fastnewton" and (kernels_dir.parent / "__init__.py").exists()


def user_cache_root():
    """The per-user folder under which installed copies cache their kernels."""
    return pathlib.Path(AppDirs(appname="fastnewton", appauthor=False).user_cache_dir)


def cache_dir(kernels_dir=None):
    """The folder the kernels (of this copy, or of ``kernels_dir``) are cached in (created on first compile)."""
    kernels_dir = pathlib.Path(kernels_dir or _kernels_dir()).resolve()
    subpath = _locator_base().get_suitable_cache_subpath(str(kernels_dir / "__init__.py"))
    if numba.config.CACHE_DIR:
        return pathlib.Path(numba.config.CACHE_DIR) / subpath
    if installed_layout(kernels_dir):
        return user_cache_root() / subpath
    return kernels_dir / "__pycache__"


def _locator_base():
    # Numba 0.68 names it UserProvidedCacheLocator (and CacheImpl); earlier releases add a leading _.
    return getattr(caching, "UserProvidedCacheLocator", None) or getattr(caching, "_UserProvidedCacheLocator")


def kernels_stamp(kernels_dir):
    """The freshness stamp of every kernel: a SHA-256 of all ``*.py`` files of ``kernels_dir`` (names and
    contents, in name order), re-hashed only when a file's size or modification time moves."""
    files = sorted(pathlib.Path(kernels_dir).glob("*.py"))
    listing = tuple((path.name, status.st_mtime_ns, status.st_size) for path in files for status in [path.stat()])
    return _hash_kernel_sources(str(kernels_dir), listing)


@functools.lru_cache(maxsize=None)
def _hash_kernel_sources(kernels_dir, listing):
    digest = hashlib.sha256()
    for name, _, _ in listing:
        digest.update(name.encode() + b"\0")
        digest.update((pathlib.Path(kernels_dir) / name).read_bytes())
    return digest.digest()


def _make_locator():
    base = _locator_base()

    class KernelsLocator(base):
        """Locates the cache of fastnewton's kernels (``cache_dir``) and stamps it with every kernel file
        (``kernels_stamp``); see the module docstring."""

        def __init__(self, py_func, py_file):
            super().__init__(py_func, py_file)
            self._cache_path = str(cache_dir(pathlib.Path(py_file).parent))

        def get_source_stamp(self):
            return kernels_stamp(pathlib.Path(self._py_file).parent)

        @classmethod
        def from_function(cls, py_func, py_file):
            if pathlib.Path(py_file).resolve().parent != _kernels_dir():
                return None  # not one of our kernels: Numba's own locators
            # The mixin's from_function builds the locator and checks the folder is writable;
            # None (not writable) falls through to Numba's usual locators.
            return super(base, cls).from_function(py_func, py_file)

    return KernelsLocator


def install_locator():
    """Put the fastnewton locator first in Numba's list (idempotent); must run before the kernels import.

    The locator answers only for the files of the ``fastnewton.kernels`` folder in use and returns None
    (Numba's next locator) for everything else, so other packages' caches are untouched; for our kernels it
    uses the folder Numba would (``NUMBA_CACHE_DIR``, else beside the source in a checkout) or, for an
    install, the per-user one.
    """
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")
    if any(getattr(cls, "_fastnewton", False) for cls in impl._locator_classes):
        return
    locator = _make_locator()
    locator._fastnewton = True
    impl._locator_classes = [locator, *impl._locator_classes]


logger = logging.getLogger("fastnewton")
_notice_lock = threading.Lock()
_noticed = False


class _FirstCompileListener(event.Listener):
    """Says once per process, when a fastnewton kernel is compiled (not loaded from the disk cache)."""

    def __init__(self, verbose):
        self.verbose = verbose

    def on_start(self, ev):
        global _noticed
        dispatcher = ev.data.get("dispatcher") if isinstance(ev.data, dict) else None
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
        if not module.startswith(__package__ + ".kernels"):
            return
        with _notice_lock:
            if _noticed:
                return
            _noticed = True
        message = (f"compiling fastnewton's Numba kernels for this kind of input: first use only, up to a "
                   f"minute; later runs load them from {cache_dir()} (`python -m fastnewton warmup` "
                   f"compiles them ahead)")
        logger.info(message)
        if self.verbose:
            print(message, flush=True)

    def on_end(self, ev):
        pass


@contextlib.contextmanager
def compile_notice(verbose):
    """While active, the first kernel compile of the process logs one line (and prints it if ``verbose``)."""
    if _noticed:
        yield
        return
    with event.install_listener("numba:compile", _FirstCompileListener(verbose)):
        yield
