"""The import rules of docs/architecture.md ("Package graph"), checked on every project .py file with ``ast``:
``utils/`` is a leaf; ``datasets/``, ``losses/`` and ``models/`` may import ``utils/`` only; ``preprocess/`` may
import ``datasets/`` and ``utils/``; everything else may import anything. The document's tables (the graph as it is
today, the rules, where each paper equation lives) must match the code. No file edits ``sys.path`` (the project is
an installed package) or imports a private torch module (``torch._x``: it can vanish in any torch release)."""
import ast
import os
import re

import pytest

from tests.conftest import ROOT

FOLDERS = ("datasets", "models", "losses", "utils", "preprocess", "inference", "bench", "scripts", "tests")
MODULES = ("train", "test", "infer", "pretrain")  # entry points at the repository root
ALLOWED = {"utils": set(), "datasets": {"utils"}, "losses": {"utils"}, "models": {"utils"},
           "preprocess": {"datasets", "utils"}}  # a part not listed may import anything
SKIP_DIRS = {".venv", ".git", "data", "output", "checkpoints", "__pycache__"}
DOC = os.path.join(ROOT, "docs", "architecture.md")


def part_of(relpath):
    """The part a file belongs to: its top folder (``models``) or, at the root, its module name (``train``)."""
    head = relpath.split("/")[0]
    return head[:-3] if head.endswith(".py") else head


def project_files(root):
    """Every .py file of the project under ``root``, as paths relative to it (``/``-separated), sorted."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        found += [os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/") for f in files
                  if f.endswith(".py")]
    return sorted(found)


def project_imports(root, relpath):
    """(line, imported part, imported name) of every import of another part of the project in ``relpath``,
    function-level imports included; a relative import counts as the file's own part."""
    own = part_of(relpath)
    with open(os.path.join(root, relpath), encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=relpath)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top != own and (top in FOLDERS or top in MODULES):
                found.append((node.lineno, top, name))
    return found


def violations(root):
    """``file:line imports NAME`` for every import that the rules of ``ALLOWED`` forbid."""
    bad = []
    for relpath in project_files(root):
        rule = ALLOWED.get(part_of(relpath))
        if rule is None:
            continue
        for line, top, name in project_imports(root, relpath):
            if top not in rule:
                allowed = ", ".join(sorted(rule)) or "nothing else of the project"
                bad.append(f"{relpath}:{line} imports {name} ({part_of(relpath)}/ may import {allowed})")
    return bad


def import_graph(root):
    """Part -> set of the other parts it imports."""
    graph = {}
    for relpath in project_files(root):
        graph.setdefault(part_of(relpath), set()).update(top for _, top, _ in project_imports(root, relpath))
    return graph


def test_no_forbidden_import():
    bad = violations(ROOT)
    assert not bad, "imports against the rules of docs/architecture.md (Package graph):\n" + "\n".join(bad)


def test_the_checker_finds_a_forbidden_import(tmp_path):
    (tmp_path / "utils").mkdir()
    (tmp_path / "losses").mkdir()
    (tmp_path / "utils" / "ok.py").write_text("import os\nimport utils.other\n")
    lazy = '"""doc"""\n\n\ndef f():\n    from models.vctg import x\n    return x\n'  # inside a function
    (tmp_path / "losses" / "bad.py").write_text(lazy)
    (tmp_path / "train.py").write_text("import models\nimport losses\n")  # entry points may import anything
    assert violations(tmp_path) == ["losses/bad.py:5 imports models.vctg (losses/ may import utils)"]
    (tmp_path / "utils" / "ok.py").write_text("from datasets.text import encode\n")
    assert violations(tmp_path) == [
        "losses/bad.py:5 imports models.vctg (losses/ may import utils)",
        "utils/ok.py:1 imports datasets.text (utils/ may import nothing else of the project)"]


SYS_PATH_EDITS = {"insert", "append", "extend"}


def dotted(node):
    """``a.b.c`` of a chain of names and attributes, or None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def is_private_torch(name):
    """Does the dotted ``name`` lie under torch and pass through a private part (``torch._x``, ``torch.a._b``)?"""
    top, *rest = name.split(".")
    return top == "torch" and any(p.startswith("_") and not p.startswith("__") for p in rest)


def imported_names(node):
    """The dotted names an import node brings in: ``import a.b`` -> a.b; ``from a import b`` -> a, a.b."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return []


def path_edits_and_private_torch(source, relpath):
    """``file:line what`` for every ``sys.path.insert/append/extend(...)`` call, import of a private torch module
    and use of ``torch._x`` in ``source`` (code only: strings and comments that name them do not count)."""
    bad = set()
    for node in ast.walk(ast.parse(source, filename=relpath)):
        name = dotted(node.func) if isinstance(node, ast.Call) else None
        if name and name.startswith("sys.path.") and name.split(".")[-1] in SYS_PATH_EDITS:
            bad.add((node.lineno, f"calls {name} (the project is installed: pip install -e .)"))
        private = [n for n in imported_names(node) if is_private_torch(n)]
        if private:
            bad.add((node.lineno, f"imports {private[0]} (a private torch module)"))
        if isinstance(node, ast.Attribute) and dotted(node.value) == "torch" and is_private_torch(f"torch.{node.attr}"):
            bad.add((node.lineno, f"uses torch.{node.attr} (a private torch module)"))
    return [f"{relpath}:{line} {what}" for line, what in sorted(bad)]


def test_no_sys_path_edit_or_private_torch_import():
    bad = []
    for relpath in project_files(ROOT):
        with open(os.path.join(ROOT, relpath), encoding="utf-8") as f:
            bad += path_edits_and_private_torch(f.read(), relpath)
    assert not bad, "sys.path edits or private torch modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("source,found", [
    ("import sys\nsys.path.insert(0, 'x')\n", "calls sys.path.insert"),
    ("import sys\nsys.path.append('x')\n", "calls sys.path.append"),
    ("import torch._weights_only_unpickler\n", "imports torch._weights_only_unpickler"),
    ("import torch._weights_only_unpickler as wou\n", "imports torch._weights_only_unpickler"),
    ("from torch._weights_only_unpickler import Unpickler\n", "imports torch._weights_only_unpickler"),
    ("from torch import _weights_only_unpickler\n", "imports torch._weights_only_unpickler"),
    ("from torch.serialization import _get_safe_globals\n", "imports torch.serialization._get_safe_globals"),
    ("import torch\nx = torch._weights_only_unpickler.Unpickler\n", "uses torch._weights_only_unpickler"),
])
def test_the_scanner_finds_path_edits_and_private_torch(source, found):
    bad = path_edits_and_private_torch(source, "tool.py")
    last = source.count("\n")  # each pattern is on the source's last line
    assert len(bad) == 1 and bad[0].startswith(f"tool.py:{last} {found} "), bad


def test_the_scanner_ignores_public_torch_and_text():
    ok = ('"""No sys.path.insert(0, ...) and no torch._weights_only_unpickler here."""\n'
          "import sys\nimport torch\nimport torch.nn.functional as F\n"
          "from torch.serialization import add_safe_globals\n"
          "print(torch.__version__, sys.path[0], 'torch._utils._rebuild_tensor_v2')  # sys.path.append('x')\n")
    assert path_edits_and_private_torch(ok, "tool.py") == []


def doc_table(heading):
    """Rows (lists of cell texts) of the first table after the markdown heading ``heading`` in DOC."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    start = text.find(f"\n{heading}\n")
    if start < 0:
        pytest.fail(f"{DOC} has no heading {heading!r}")
    rows = []
    for line in text[start + len(heading) + 2:].splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # header and separator rows left out


def names(cell):
    """The parts named in a cell: `utils/` -> utils, `train.py` -> train; '-' -> none."""
    return {n.rstrip("/")[:-3] if n.endswith(".py") else n.rstrip("/") for n in re.findall(r"`([^`]+)`", cell)}


def shadowing_scripts(root, folders=("bench", "preprocess", "scripts")):
    """Scripts run as ``python FOLDER/NAME.py`` put FOLDER first on sys.path, so a NAME equal to a top-level module
    or package of the project (``infer``, ``train``, ``utils``, ...) makes ``import NAME`` load the script itself."""
    top = {os.path.splitext(n)[0] for n in os.listdir(root)
           if (n.endswith(".py") or os.path.isfile(os.path.join(root, n, "__init__.py"))) and not n.startswith(".")}
    return sorted(f"{d}/{n}" for d in folders if os.path.isdir(os.path.join(root, d))
                  for n in os.listdir(os.path.join(root, d)) if n.endswith(".py") and n[:-3] in top)


def test_no_script_shadows_a_top_level_module(tmp_path):
    assert shadowing_scripts(ROOT) == []
    (tmp_path / "infer.py").write_text("")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "infer.py").write_text("")
    (tmp_path / "bench" / "infer_speed.py").write_text("")
    assert shadowing_scripts(str(tmp_path)) == ["bench/infer.py"]


def test_package_graph_in_the_doc_is_the_code():
    rows = {next(iter(names(r[0]))): r for r in doc_table("## Package graph")}
    graph = import_graph(ROOT)
    assert set(rows) == set(graph), f"{DOC}: the Package graph rows should be exactly {sorted(graph)}"
    for part, (_, today, may) in rows.items():
        assert names(today) == graph[part], f"{DOC}: `{part}` imports {sorted(graph[part])} today, not {today}"
        expected = "anything" if part not in ALLOWED else ALLOWED[part]
        got = "anything" if may.startswith("anything") else names(may)
        assert got == expected, f"{DOC}: `{part}` may import {expected}, the document says {may}"


def defines(relpath, qualname):
    """Does ``relpath`` define ``qualname`` (``f`` or ``Class.method``)?"""
    with open(os.path.join(ROOT, relpath), encoding="utf-8") as f:
        body = ast.parse(f.read()).body
    for part in qualname.split("."):
        found = [n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part]
        if not found:
            return False
        body = found[0].body
    return True


def test_every_paper_equation_has_a_place_that_exists():
    rows = doc_table("## Where each paper equation lives")
    numbers = [int(n) for row in rows for n in re.findall(r"\d+", row[0])]
    assert sorted(numbers) == list(range(1, 22)), f"{DOC}: equations 1-21 should each have one row, got {numbers}"
    for row in rows:
        places = re.findall(r"`([\w/]+\.py):([\w.]+)`", row[2])
        assert places, f"{DOC}: eq. {row[0]} names no `file.py:function`"
        for relpath, qualname in places:
            assert os.path.isfile(os.path.join(ROOT, relpath)), f"{DOC}: eq. {row[0]}: no file {relpath}"
            assert defines(relpath, qualname), f"{DOC}: eq. {row[0]}: {relpath} defines no {qualname}"
