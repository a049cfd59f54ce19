"""The package's layers: every import inside ``pointcoc/`` runs downward (README, "Where each part lives").

Each module belongs to one layer of ``LAYERS`` (bottom first). A module may import modules of its own layer
and of the layers below it, never of a layer above: imports at the top of a file and inside functions,
absolute and relative, and ``importlib.import_module`` with a literal ``pointcoc.`` name, all count.
"""
import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pointcoc"

# Bottom first. A name is a module or a package (its submodules belong to it too); the bare "pointcoc" is
# only the package's own __init__ (the public facade), never the prefix of the others.
LAYERS = [
    ("base", ["pointcoc._optional", "pointcoc._version", "pointcoc._checkpoint_format", "pointcoc._precision",
              "pointcoc._atomic", "pointcoc._links", "pointcoc.allocator"]),
    ("ops", ["pointcoc.ops"]),
    ("layers", ["pointcoc.layers", "pointcoc.functional"]),
    ("models", ["pointcoc.models"]),
    ("model tools", ["pointcoc.export", "pointcoc.onnx", "pointcoc.env"]),
    ("facade", ["pointcoc"]),
    ("data", ["pointcoc.data"]),
    ("viz", ["pointcoc.viz"]),
    ("engine", ["pointcoc.engine"]),
    ("bench", ["pointcoc.bench"]),
    ("commands", ["pointcoc.commands", "pointcoc.__main__"]),
]
LEVEL = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}


def layer_of(module: str) -> Optional[int]:
    """Index in LAYERS of ``module`` (a dotted name inside pointcoc), or None when no layer holds it."""
    if module == "pointcoc":
        return LEVEL["pointcoc"]
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        prefix = ".".join(parts[:end])
        if prefix in LEVEL:
            return LEVEL[prefix]
    return None


def package_modules(root: Path) -> Dict[str, Path]:
    """Dotted name -> file of every module under ``root`` (a folder named ``pointcoc``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = ("pointcoc",) + path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(module: str, path: Path, known) -> List[tuple]:
    """(line, imported pointcoc module) of every import in the file, at any depth of the syntax tree.

    ``from X import name`` counts as importing ``X.name`` when that is a module of ``known``, else ``X``.
    """
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.append((node.lineno, sub if sub in known else source))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              == "import_module" and node.args):
            arg = node.args[0]
            if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                arg = arg.values[0]  # f"pointcoc.engine.{name}": at least pointcoc.engine
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node.lineno, arg.value.rstrip(".")))
    return sorted({(line, name) for line, name in found if name == "pointcoc" or name.startswith("pointcoc.")})


def upward_imports(root: Path) -> List[str]:
    """One line per import of a higher layer, and per module that no layer holds."""
    modules = package_modules(root)
    problems = []
    for module, path in modules.items():
        level = layer_of(module)
        if level is None:
            problems.append(f"{module} ({path.name}) belongs to no layer: add it to LAYERS in tests/test_layout.py "
                            "and to the README's table")
            continue
        for line, target in imported_modules(module, path, modules):
            target_level = layer_of(target)
            if target_level is not None and target_level > level:
                problems.append(f"{module} (layer {LAYERS[level][0]!r}) imports {target} (layer "
                                f"{LAYERS[target_level][0]!r}) at line {line}")
    return problems


def test_every_import_in_the_package_runs_downward():
    assert upward_imports(PACKAGE) == []


def test_the_readme_table_names_every_layer_entry():
    text = (PACKAGE.parent / "README.md").read_text()
    section = text.split("## Where each part lives", 1)[1].split("\n## ", 1)[0]
    for name in LEVEL:
        part = name.split(".")[-1]
        shown = ("`pointcoc/__init__.py`" if name == "pointcoc" else
                 f"`pointcoc/{part}/`" if (PACKAGE / part).is_dir() else f"{part}.py`")
        assert shown in section, f"README, Where each part lives: {name} ({shown}) is missing"


def test_an_upward_import_is_found_at_any_depth(tmp_path):
    """The check itself: a models module importing the engine inside a function, relatively, is reported,
    and so is a module outside every layer."""
    root = tmp_path / "pointcoc"
    (root / "models").mkdir(parents=True)
    (root / "engine").mkdir()
    (root / "__init__.py").write_text("from . import models\n")
    (root / "models" / "__init__.py").write_text("")
    (root / "engine" / "__init__.py").write_text("from ..models import loader\n")
    (root / "models" / "loader.py").write_text("import os\n\n\ndef load():\n    from ..engine import checkpoint\n")
    (root / "engine" / "checkpoint.py").write_text("")
    (root / "stray.py").write_text("")
    assert upward_imports(root) == [
        "pointcoc.models.loader (layer 'models') imports pointcoc.engine.checkpoint (layer 'engine') at line 5",
        "pointcoc.stray (stray.py) belongs to no layer: add it to LAYERS in tests/test_layout.py and to the "
        "README's table",
    ]


@pytest.mark.parametrize("source, expected", [
    ("from pointcoc import bench as benchmark\n", "pointcoc.bench"),
    ("from pointcoc import __version__\n", "pointcoc"),
    ("import importlib\nimportlib.import_module(f'pointcoc.engine.{name}')\n", "pointcoc.engine"),
    ("from .. import engine\n", "pointcoc.engine"),
])
def test_imports_are_resolved_to_modules(tmp_path, source, expected):
    path = tmp_path / "x.py"
    path.write_text(source)
    known = {"pointcoc", "pointcoc.bench", "pointcoc.engine", "pointcoc.models", "pointcoc.models.x"}
    assert [name for _, name in imported_modules("pointcoc.models.x", path, known)] == [expected]


def test_importing_pointcoc_loads_no_data_viz_engine_bench_or_commands():
    """``import pointcoc`` is the model library: training, benchmarks and the command load only when used."""
    code = ("import sys, pointcoc\n"
            "print(' '.join(m for m in sorted(sys.modules) if m.split('.')[0] == 'pointcoc' and "
            "m.split('.')[1:2] in (['data'], ['viz'], ['engine'], ['bench'], ['commands'])))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == []
