"""Imports run one way: the graph of our modules has no cycle, and no function hides an import of ours
(the usual way to dodge a cycle). The command-line front ends are the exception: they import the library
inside their commands so that `--help` answers without loading torch."""

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = ("acestep_core", "acestep_parity", "weights_convert")
# Modules whose functions may import our modules lazily, never to dodge a cycle: command-line front ends
# (start-up time of `--help`) and the HTML report, whose plots need the optional matplotlib.
LAZY_OK = {"acestep_core.cli", "acestep_parity.cli", "acestep_parity.__init__", "acestep_parity.__main__",
           "acestep_parity.official_worker", "acestep_parity.compare_reports", "acestep_parity.html_report"}


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts)] = path
    return found


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not module.endswith("__init__"):
        base = base[:-1]  # a module's package
    else:
        base = base[:-1]  # the package itself
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(module: str, node, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        # `from pkg import x`: the submodule pkg.x when x is one, else (a name defined in) pkg itself.
        target = _resolve(module, node)
        names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
    out = []
    for name in names:
        for candidate in (name, name + ".__init__"):
            if candidate in known and candidate != module:
                out.append(candidate)
    return out


def _graph():
    modules = _modules()
    known = set(modules)
    edges, lazy = {m: set() for m in modules}, []
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = _targets(module, node, known)
            top_level = node in tree.body
            if top_level:
                edges[module].update(targets)
            elif targets:
                lazy.append((module, node.lineno, targets))
    return edges, lazy


def test_no_import_cycle():
    edges, _ = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_no_function_local_imports_of_our_modules():
    _, lazy = _graph()
    hidden = [(m, line, t) for m, line, t in lazy if m not in LAZY_OK]
    assert not hidden, f"function-local imports of our modules: {hidden}"


def test_the_converter_sits_below_the_loader():
    """acestep_core.convert reads and writes checkpoints with the bottom layer only."""
    edges, _ = _graph()
    allowed = {"acestep_core.config", "acestep_core.components", "acestep_core.checkpoint",
               "acestep_core.safetensors_io", "acestep_core.text"}
    lm_models = {"acestep_core.lm.config", "acestep_core.lm.model", "acestep_core.lm.tokenizer"}  # the LM's registry
    for module, targets in edges.items():
        if module.startswith("acestep_core.convert."):
            outside = {t for t in targets if not t.startswith("acestep_core.convert.")} - allowed - lm_models
            assert not outside, f"{module} imports {sorted(outside)}"
