"""DESIGN.md §6 layering, checked on the source with `ast`: imports only point down a floor, there is no import
circle between modules, and no private name (`_x`) is imported from another module.

Floors (a module may import its own floor's package and any lower floor):
    0  layers/, presets.py, version.py, _compat.py        the ground
    1  data/, pretrained/                                  decoding and checkpoints
    2  models/, model_cards.py                             networks, weight loading, model cards
    3  tasks/                                              VideoClassifier, preprocessor, resolver
    4  evaluation, training/, attention, export/, inference, demo, synthetic, benchmark/, hub (push_to_hub)
    5  beam/                                               the Apache Beam pipeline (scale-out classify/features)
    6  cli.py                                              argument parsing only
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "nonlocal_zoo"

FLOORS = {
    "layers": 0, "presets": 0, "version": 0, "_compat": 0, "weights": 0,
    "data": 1, "pretrained": 1,
    "models": 2, "model_cards": 2,
    "tasks": 3,
    "evaluation": 4, "training": 4, "attention": 4, "export": 4, "inference": 4, "demo": 4, "synthetic": 4,
    "benchmark": 4, "hub": 4, "features": 4, "timeline": 4,
    "beam": 5,
    "cli": 6,
}
# `nonlocal_zoo/__init__.py` re-exports public names lazily (module __getattr__), so it is not a floor of its own.
LAZY_ROOT = "nonlocal_zoo"


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(name, path):
    """(imported module, imported names, line) of every `nonlocal_zoo` import in a file, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names if alias.name.startswith(LAZY_ROOT)]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            if module.startswith(LAZY_ROOT):
                out.append((module, [a.name for a in node.names], node.lineno))
    return out


def _top(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _floor(module):
    top = _top(module)
    return FLOORS.get(top)


MODULES = dict(_modules())


def test_every_module_has_a_floor():
    missing = sorted(m for m in MODULES if _top(m) is not None and _floor(m) is None)
    assert not missing, f"modules without a floor in tests/test_layering.py: {missing}"


def test_imports_point_down():
    upward = []
    for name, path in MODULES.items():
        own = _floor(name)
        if own is None:
            continue
        for module, _, line in _imports(name, path):
            if module == LAZY_ROOT or _top(module) == _top(name):
                continue
            target = _floor(module)
            if target is None or target > own:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}) imports {module} ({target})")
    assert not upward, "imports pointing up a floor:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, names, _ in _imports(name, path):
            for candidate in [module] + [f"{module}.{n}" for n in names]:
                if candidate in MODULES and candidate != name:
                    graph[name].add(candidate)
    # a package's __init__ importing its own submodules is not a cycle of the layering: drop child -> parent edges
    # only where the parent is the child's own package (re-export), keep everything else
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _module_aliases(tree, name, path):
    """Local names bound to nonlocal_zoo modules in a file: `import nonlocal_zoo.x as y`, `from nonlocal_zoo import x`,
    `from nonlocal_zoo.data import transforms` -> {local name: module}."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(LAZY_ROOT) and alias.asname:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            for module, names, _ in _imports(name, path):
                for imported in names:
                    if f"{module}.{imported}" in MODULES:
                        aliases[imported] = f"{module}.{imported}"
    return aliases


def _private_uses(name, path):
    """`from m import _x` and `m._x` (m another nonlocal_zoo module) in a file, as readable strings."""
    found = []
    for module, names, line in _imports(name, path):
        if module == name:
            continue
        for imported in names:
            if imported.startswith("_") and not imported.startswith("__") and f"{module}.{imported}" not in MODULES:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}.{imported}")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases = _module_aliases(tree, name, path)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and aliases[node.value.id] != name and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_private_names_across_modules():
    private = [use for name, path in MODULES.items() for use in _private_uses(name, path)]
    assert not private, "private names used across modules:\n" + "\n".join(private)


@pytest.mark.parametrize("files, check, expected", [
    ({"data/bad.py": "from nonlocal_zoo.models import create_model\n"}, "test_imports_point_down",
     "imports nonlocal_zoo.models"),
    ({"data/a.py": "from nonlocal_zoo.data import b\n", "data/b.py": "from nonlocal_zoo.data import a\n"},
     "test_no_import_cycles", "nonlocal_zoo.data.a -> nonlocal_zoo.data.b -> nonlocal_zoo.data.a"),
    ({"data/a.py": "def _hidden():\n    pass\n", "data/b.py": "from nonlocal_zoo.data.a import _hidden\n"},
     "test_no_private_names_across_modules", "imports nonlocal_zoo.data.a._hidden"),
    ({"data/a.py": "def _hidden():\n    pass\n", "data/b.py": "from nonlocal_zoo.data import a\na._hidden()\n"},
     "test_no_private_names_across_modules", "uses nonlocal_zoo.data.a._hidden"),
])
def test_the_checker_can_fail(tmp_path, files, check, expected):
    """Each rule reports a violation written into a throwaway package."""
    global MODULES, PACKAGE
    root = tmp_path / "nonlocal_zoo"
    (root / "data").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "data" / "__init__.py").write_text("")
    for rel, text in files.items():
        (root / rel).write_text(text)
    saved = PACKAGE, MODULES
    try:
        PACKAGE = root
        MODULES = dict(_modules())
        with pytest.raises(AssertionError, match=expected):
            globals()[check]()
    finally:
        PACKAGE, MODULES = saved
