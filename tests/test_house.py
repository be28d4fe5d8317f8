"""The house's shape, checked by reading the code: one study layout, small functions, a one-way import graph,
and library notebooks that show each public function at work right where it is defined."""
import ast
import json
import re

from conftest import REPO

MODULES = sorted(p for p in (REPO / "abovqa").glob("*.py") if not p.stem.startswith("_"))
LIBRARY_NOTEBOOKS = sorted((REPO / "nbs").glob("[0-9]*.ipynb"))
MAX_FUNCTION_LINES = 60
EXPORT = re.compile(r"^#\|\s*export", re.M)


def kit_imports(module) -> set[str]:
    "Names of abovqa modules `module` imports, at top level or inside a function."
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level and node.module:
                found.add(node.module.split(".")[0])
            elif node.module and node.module.startswith("abovqa."):
                found.add(node.module.split(".")[1])
            elif node.module == "abovqa" or (node.level and not node.module):
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("abovqa."))
    return found - {module.stem}


def test_core_imports_nothing_of_the_kit():
    assert kit_imports(REPO / "abovqa" / "core.py") == set()


def test_no_function_is_longer_than_a_screen():
    long = []
    for module in MODULES:
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long.append(f"{module.stem}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long


def test_the_study_layout_is_spelled_once():
    "Only abovqa.core knows where a stage's table lives; everything else asks `Study(work)`."
    spelled = {m.stem: m.read_text().count("qa.parquet") for m in MODULES}
    assert sum(spelled.values()) == 1 and spelled["core"] == 1, {m: n for m, n in spelled.items() if n}


def public_functions(source: str) -> list[str]:
    try:
        tree = ast.parse("\n".join(line for line in source.splitlines() if not line.startswith(("%", "!"))))
    except SyntaxError:
        return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and not n.name.startswith("_")]


def test_every_public_function_is_shown_where_it_is_defined():
    "A library notebook cell that defines a public function is followed, before the next exported cell, by one using it."
    unshown = []
    for notebook in LIBRARY_NOTEBOOKS:
        code = ["".join(c["source"]) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
        for i, source in enumerate(code):
            if not EXPORT.search(source):
                continue
            following = []
            for later in code[i + 1:]:
                if EXPORT.search(later):
                    break
                following.append(later)
            shown = "\n".join(following)
            unshown += [f"{notebook.name}: {name}" for name in public_functions(source) if not re.search(rf"\b{name}\b", shown)]
    assert not unshown, unshown
