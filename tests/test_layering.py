"""No import runs upward: the apps (cli, pipeline, report) call the library, the library never
calls them; cache/ never imports train/ or eval/; train/ never imports eval/; models/ and
shards/ import neither the cache nor training. Read from the source, imports inside functions
included."""

from __future__ import annotations

import ast
from pathlib import Path

import salt_cache

PACKAGE = Path(salt_cache.__file__).resolve().parent
APPS = {"salt_cache.cli", "salt_cache.pipeline", "salt_cache.report"}
# module prefix -> what it must never import
FORBIDDEN = {
    "salt_cache.cache": ("salt_cache.train", "salt_cache.eval"),
    "salt_cache.train": ("salt_cache.eval",),
    "salt_cache.models": ("salt_cache.cache", "salt_cache.train", "salt_cache.eval", "salt_cache.shards"),
    "salt_cache.shards": ("salt_cache.cache", "salt_cache.train", "salt_cache.eval", "salt_cache.models"),
}


def imports_of(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in out if m.startswith("salt_cache")}


def test_no_import_runs_upward():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = "salt_cache." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        found = imports_of(path)
        if module not in APPS:
            problems += [f"{module} imports the app {m}" for m in found if m in APPS]
        for prefix, banned in FORBIDDEN.items():
            if module == prefix or module.startswith(prefix + "."):
                problems += [f"{module} imports {m}" for m in found if m.startswith(banned)]
    assert not problems, "\n".join(problems)
