"""The repository's structure (issue 16's "done when"): RandAR's modules import each other without a cycle, the
generic `RandAR/utils/` imports no domain package, and no source file is over ~500 lines.

Imports are read from the source (ast), function-level imports included: a lazy import still ties two modules
together.
"""
import ast
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAIN_PACKAGES = ("model", "dataset", "applications", "sampling", "training", "toy", "eval")
MAX_LINES = 500
# Where the line limit applies: the package, the tools, the benchmarks and the top-level scripts.
SIZED_FOLDERS = ("RandAR/", "tools/", "benchmarks/")


def module_files(root: str = ROOT, package: str = "RandAR") -> dict:
    """Dotted module name -> file path, for every .py file under `package`."""
    out = {}
    for folder, _, files in os.walk(os.path.join(root, package)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    return out


def imported_names(source: str) -> set:
    """Every module (and `module.name`) an `import` or `from ... import` anywhere in `source` names."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph(modules: dict) -> dict:
    """Module -> the project modules it imports (a `from a import b` names module a.b when b is one)."""
    graph = {}
    for module, path in modules.items():
        with open(path) as f:
            names = imported_names(f.read())
        graph[module] = sorted({n for n in names if n in modules and n != module})
    return graph


def find_cycles(graph: dict) -> list:
    """Each cycle found by a depth-first walk, as [a, b, ..., a]."""
    cycles, done, stack = [], set(), []

    def visit(module):
        if module in stack:
            cycles.append(stack[stack.index(module):] + [module])
            return
        if module in done:
            return
        stack.append(module)
        for dep in graph[module]:
            visit(dep)
        stack.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    return cycles


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def utils_to_domain(graph: dict) -> list:
    """(utils module, domain module) for each import of a domain package by RandAR/utils/."""
    return [(m, d) for m in sorted(graph) if in_package(m, "RandAR.utils") for d in graph[m]
            if any(in_package(d, f"RandAR.{p}") for p in DOMAIN_PACKAGES)]


def long_files(root: str = ROOT, limit: int = MAX_LINES) -> list:
    """(path, lines) of the tracked .py files over `limit` lines in the package, tools, benchmarks and top level."""
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.split()
    out = []
    for path in tracked:
        if not (path.startswith(SIZED_FOLDERS) or "/" not in path) or not os.path.isfile(os.path.join(root, path)):
            continue
        with open(os.path.join(root, path)) as f:
            n = sum(1 for _ in f)
        if n > limit:
            out.append((path, n))
    return out


# ---------------------------------------------------------------- the checks themselves

def test_no_import_cycle():
    cycles = find_cycles(import_graph(module_files()))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_utils_import_no_domain_package():
    edges = utils_to_domain(import_graph(module_files()))
    assert not edges, "RandAR/utils/ imports domain code: " + ", ".join(f"{m} -> {d}" for m, d in edges)


def test_no_file_over_500_lines():
    over = long_files()
    assert not over, "files over 500 lines: " + ", ".join(f"{p} ({n})" for p, n in over)


# ---------------------------------------------------------------- the checkers, on small made-up trees

def _write(root, files: dict):
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def test_checkers_find_a_lazy_cycle_and_a_utils_import(tmp_path):
    _write(tmp_path, {
        "RandAR/__init__.py": "",
        "RandAR/model/__init__.py": "",
        "RandAR/model/a.py": "from RandAR.model import b\n",
        "RandAR/model/b.py": "def f():\n    from RandAR.model.a import g  # lazy, still an edge\n",
        "RandAR/model/c.py": "import RandAR.model.a\n",
        "RandAR/utils/__init__.py": "",
        "RandAR/utils/x.py": "def f():\n    import RandAR.toy.data\n",
        "RandAR/utils/y.py": "from RandAR.utils import x\n",
        "RandAR/toy/__init__.py": "",
        "RandAR/toy/data.py": "import os\n",
    })
    graph = import_graph(module_files(str(tmp_path)))
    # `from package import module` imports the package too.
    assert graph["RandAR.model.a"] == ["RandAR.model", "RandAR.model.b"]
    assert graph["RandAR.model.c"] == ["RandAR.model.a"]
    cycles = find_cycles(graph)
    assert len(cycles) == 1 and set(cycles[0]) == {"RandAR.model.a", "RandAR.model.b"}
    assert utils_to_domain(graph) == [("RandAR.utils.x", "RandAR.toy.data")]


@pytest.mark.parametrize("lines, flagged", [(500, False), (501, True)])
def test_line_check_counts_tracked_files(tmp_path, lines, flagged):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    _write(tmp_path, {"RandAR/big.py": "x = 1\n" * lines, "tests/test_big.py": "x = 1\n" * 900,
                      "top.py": "x = 1\n" * lines, "RandAR/untracked.py": "x = 1\n" * 900})
    subprocess.run(["git", "add", "RandAR/big.py", "tests/test_big.py", "top.py"], cwd=tmp_path, check=True)
    expected = [("RandAR/big.py", lines), ("top.py", lines)] if flagged else []
    assert sorted(long_files(str(tmp_path))) == expected
