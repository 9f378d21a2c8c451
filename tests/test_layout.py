"""The layout a reader walks: imports go one way (no cycle, no module-level __getattr__ or self-import shims), no
file outgrows one concern, lines stay readable, and every file opens with the paragraph that explains it."""
import ast
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def project_files():
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = [f for f in out.split() if os.path.exists(os.path.join(ROOT, f))]
    return [f for f in files if not f.startswith(("tests/", "configs/"))]


def module_name(path):
    return path[:-3].replace("/", ".").removesuffix(".__init__")


def imports_of(path, modules):
    """The project modules a file imports, anywhere in it (inside functions too: a cycle hidden in a function is
    still a cycle a reader has to untangle)."""
    me = module_name(path)
    package = me if path.endswith("__init__.py") else me.rpartition(".")[0]
    deps = set()
    for node in ast.walk(ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from .common import y
                parts = package.split(".") if package else []
                parts = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(parts + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            # `import tasks.recall` depends on tasks.recall (and through it on tasks/__init__)
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != me:
                deps.add(name)
    return deps


def find_cycle(graph):
    """One cycle as a list of modules, or None (depth-first search with the path on the stack)."""
    state = {}

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                return path[path.index(d):] + [d]
            if d not in state:
                found = visit(d, path + [d])
                if found:
                    return found
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m, [m])
            if found:
                return found
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_the_project_modules():
    files = project_files()
    modules = {module_name(f) for f in files}
    graph = {module_name(f): imports_of(f, modules) for f in files}
    # a registry (tasks/__init__.py) imports its submodules, so a submodule must not import its package back
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_no_import_shims():
    for f in project_files():
        tree = ast.parse(open(os.path.join(ROOT, f), encoding="utf-8").read())
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "__getattr__" not in names, f"{f}: a module-level __getattr__"
        me = module_name(f).rpartition(".")[2]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert me not in [a.name for a in node.names], f"{f} imports itself"


def test_files_stay_one_concern_and_readable():
    for f in project_files():
        text = open(os.path.join(ROOT, f), encoding="utf-8").read()
        lines = text.splitlines()
        assert len(lines) <= 600, f"{f}: {len(lines)} lines"
        long = [i + 1 for i, line in enumerate(lines) if len(line) > 120]
        assert not long, f"{f}: lines over 120 characters at {long[:5]}"
        doc = ast.get_docstring(ast.parse(text))
        assert doc and len(doc.split()) >= 8, f"{f} does not open with the paragraph that explains it"


@pytest.mark.parametrize("cmd", ["train.py", "evaluate.py", "data.py", "sft.py", "bench.py"])
def test_help_does_no_work_at_import(cmd):
    """--help answers without loading word lists, models or data: nothing heavy happens at import time."""
    import sys
    import time
    t = time.perf_counter()
    r = subprocess.run([sys.executable, cmd, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-400:]
    assert "Traceback" not in r.stderr
    assert time.perf_counter() - t < 30
