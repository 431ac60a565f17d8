"""Files that ship with the package and are found by name from any folder: the cache specs
(`--spec demo`) and the recipes (`salt-cache run quickstart`).

They live at the repository's top level, `cache_specs/` and `pipelines/`, where the design card
puts them beside `salt_cache/`. A wheel (`pip install .`) carries them inside the package as
`salt_cache/cache_specs/` and `salt_cache/pipelines/` (pyproject.toml maps the two folders into
the package, no copy kept in the tree). `bundled_dir` looks inside the installed package first,
then next to it: an installed wheel finds its own copy; a source checkout, an editable install
or PYTHONPATH=checkout finds the top-level folders, so an edited spec is used at once.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from salt_cache.errors import SaltCacheError

KINDS = ("cache_specs", "pipelines")


def bundled_dir(kind: str) -> Path | None:
    """The folder of bundled `kind` files ("cache_specs" or "pipelines"), or None if absent."""
    if kind not in KINDS:
        raise ValueError(f"bundled_dir: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    package = Path(str(files("salt_cache")))
    for folder in (package / kind, package.parent / kind):
        if folder.is_dir():
            return folder
    return None


def list_bundled(kind: str) -> list[str]:
    """Names (file stems) of the bundled `kind` files, sorted."""
    folder = bundled_dir(kind)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder else []


def bundled(kind: str, path_or_name: str | Path, what: str) -> Path:
    """A YAML file: `path_or_name` itself when it is a file, else a bundled `kind` file of that
    name (`demo` or `demo.yaml`). Refused in one line that names the bundled choices."""
    p = Path(path_or_name)
    if p.is_file():
        return p
    name = str(path_or_name)
    known = ", ".join(list_bundled(kind)) or "none"
    if "/" in name or "\\" in name:
        raise SaltCacheError(f"{p}: no such {what} file (known: {known})")
    folder = bundled_dir(kind)
    candidate = (folder / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")) if folder else None
    if candidate is not None and candidate.is_file():
        return candidate
    raise SaltCacheError(f"{what} {name!r}: no such {what} file, and no bundled {what} of that name (known: {known})")
