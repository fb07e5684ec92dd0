"""The package's imports flow one way (docs/LAYOUT.md):
cli -> convert / eval -> runtime -> gguf / arch / paths / progress -> errors, and no module cycles."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "specquant_gguf"
BASE = {"errors", "arch", "paths", "progress"}
# what each part may import (besides itself); "errors" is below everything
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "arch": {"errors"},
    "paths": {"errors"},
    "progress": set(),
    "gguf": {"errors", "arch", "paths", "progress"},
    "runtime": {"errors", "arch", "paths", "progress", "gguf"},
    # the converter writes a large model's calibration text through the runtime (a W4 draft)
    "convert": {"errors", "arch", "paths", "progress", "gguf", "runtime"},
    "eval": {"errors", "arch", "paths", "progress", "gguf", "runtime"},
    "cli": {"errors", "arch", "paths", "progress", "gguf", "runtime", "convert", "eval"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every specquant_gguf module a file imports, at any depth of the file (lazy imports too)."""
    me = _module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("specquant_gguf"):
                out.add(target)
                out.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("specquant_gguf"))
    return out


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_imports_flow_one_way() -> None:
    bad = []
    for path in PKG.rglob("*.py"):
        me = _part(_module_name(path))
        if me is None:  # the package's own __init__ (lazy Model)
            continue
        for target in _imports(path):
            part = _part(target)
            if part == "__version__":  # the package's version number sits above everything, like a constant
                continue
            if part is not None and part != me and part not in ALLOWED[me]:
                bad.append(f"{_module_name(path)} imports {target}")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles_between_modules() -> None:
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {m: {t for t in _imports(p) if t in modules and t != m} for m, p in modules.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of roles
    graph = {m: {t for t in ts if not (modules[m].name == "__init__.py" and t.startswith(m + "."))}
             for m, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_no_cli_code_outside_cli() -> None:
    """argparse lives in cli/ only (library modules take arguments, not a parsed namespace)."""
    def imports_argparse(p: Path) -> bool:
        tree = ast.parse(p.read_text(encoding="utf-8"))
        return any(isinstance(n, ast.Import) and any(a.name == "argparse" for a in n.names)
                   or isinstance(n, ast.ImportFrom) and n.module == "argparse" for n in ast.walk(tree))

    offenders = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if p.parent.name != "cli" and imports_argparse(p)]
    assert not offenders, offenders
