"""The project's own invariants: notebooks are the source, the runtime package stays light."""
import ast
import json
import re
import shutil
import subprocess
import sys

from conftest import BIN, REPO

RUNTIME_FORBIDDEN = {"nbdev", "fastcore", "execnb"}


def test_nbdev_export_leaves_the_package_unchanged(tmp_path):
    "abovqa/ is exactly what nbdev_export makes from nbs/: nobody edited the generated files by hand."
    copy = tmp_path / "repo"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".venv*", ".git", "runs", "dist", "build", "_site", "_docs", "__pycache__", "*.egg-info"))
    subprocess.run([str(BIN / "nbdev_export")], cwd=copy, check=True, capture_output=True)
    for generated in sorted((REPO / "abovqa").glob("*.py")):
        assert (copy / "abovqa" / generated.name).read_text() == generated.read_text(), f"{generated.name} differs from its notebook"
    assert sorted(p.name for p in (copy / "abovqa").glob("*.py")) == sorted(p.name for p in (REPO / "abovqa").glob("*.py"))


def test_runtime_package_does_not_import_dev_tools():
    "nbdev/fastcore are dev tools: no module imports them at import time (only `abovqa docs`, a dev command, may lazily)."
    for module in sorted((REPO / "abovqa").glob("*.py")):
        for node in ast.parse(module.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in RUNTIME_FORBIDDEN, f"{module.name} imports {name}"
    modules = ", ".join(f"abovqa.{p.stem}" for p in sorted((REPO / "abovqa").glob("*.py")) if not p.stem.startswith("_"))
    code = f"import sys, {modules}; print(sorted(m for m in {sorted(RUNTIME_FORBIDDEN)!r} if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_light_modules_do_not_import_torch():
    "The command line and the curation stage answer without paying for torch."
    code = "import sys, abovqa.core, abovqa.cli, abovqa.abo, abovqa.curate, abovqa.sample; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_pipeline_notebooks_have_a_parameters_cell():
    notebooks = sorted((REPO / "nbs" / "pipeline").glob("*.ipynb"))
    assert notebooks, "no pipeline notebooks"
    for nb in notebooks:
        cells = json.loads(nb.read_text())["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{nb.name}: expected exactly one cell tagged 'parameters'"
        assert not any("key" in line.split("=")[0].lower() for line in "".join(tagged[0]["source"]).splitlines() if "=" in line), \
            f"{nb.name}: secrets never come in as parameters"


def test_notebooks_are_clean():
    "Committed notebooks went through nbdev_clean (no execution counts, no cell metadata but tags), so diffs stay readable."
    for nb in sorted((REPO / "nbs").rglob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            assert set(cell.get("metadata", {})) <= {"tags"}, f"{nb.relative_to(REPO)}: uncleaned cell metadata"
            if cell["cell_type"] == "code":
                assert cell.get("execution_count") is None, f"{nb.relative_to(REPO)}: execution counts left in"


def test_readme_is_generated_from_the_index_notebook(tmp_path):
    subprocess.run([str(BIN / "jupyter"), "nbconvert", "--to", "markdown", str(REPO / "nbs" / "index.ipynb"), "--output-dir", str(tmp_path),
                    "--output", "README", "--log-level", "WARN"], check=True)
    assert (tmp_path / "README.md").read_text() == (REPO / "README.md").read_text(), "README.md is stale: run `make export`"
    assert "make demo" in (REPO / "README.md").read_text().split("##")[1], "the README opens with the two commands"


def test_the_readme_batch_plan_is_valid():
    "The plan a user copies from the README parses and expands as it says (a matrix of 2 models x 2 fractions)."
    import yaml

    from abovqa.runs import parse_plan
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("# plan.yaml"):]
    block = block[: block.index("```")]
    runs = parse_plan(yaml.safe_load(block))
    assert [r.name for r in runs] == ["curate", "questions", "blip-vqa-base-0.25", "blip-vqa-base-0.5", "vilt-b32-vqa-0.25", "vilt-b32-vqa-0.5"]
    assert all(r.notebook.is_file() for r in runs) and runs[2].depends_on == ["questions"]


def _abovqa_imports(module) -> set[str]:
    "The abovqa modules a module imports, at its top or inside a function (relative or absolute)."
    names = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level and node.module:
                names.add(node.module.split(".")[0])
            elif node.level or node.module == "abovqa":
                names.update(a.name for a in node.names)
            elif node.module and node.module.startswith("abovqa."):
                names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("abovqa."))
    return names - {module.stem}


def _import_graph() -> dict[str, set[str]]:
    modules = {p.stem: p for p in (REPO / "abovqa").glob("*.py") if not p.stem.startswith("_")}
    return {name: _abovqa_imports(path) & set(modules) for name, path in modules.items()}


def test_import_graph_has_no_cycles():
    "Data flows one way (core -> text -> gen -> qagen, captions -> ...): no module imports, even lazily, one that imports it back."
    graph = _import_graph()
    state: dict[str, str] = {}

    def visit(module, path):
        state[module] = "open"
        for dependency in sorted(graph[module]):
            assert state.get(dependency) != "open", f"import cycle: {' -> '.join(path + [dependency])}"
            if dependency not in state:
                visit(dependency, path + [dependency])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_runtime_never_imports_testing():
    "abovqa.testing holds test doubles (a fake Gemini server, notebook makers): tests and notebook checks import it, the product never."
    importers = sorted(name for name, imports in _import_graph().items() if "testing" in imports and name != "testing")
    assert importers == [], f"runtime modules import abovqa.testing: {importers}"

MODULES = sorted(p for p in (REPO / "abovqa").glob("*.py") if not p.stem.startswith("_"))
LIBRARY_NOTEBOOKS = sorted((REPO / "nbs").glob("[0-9]*.ipynb"))
MAX_FUNCTION_LINES = 60
EXPORT = re.compile(r"^#\|\s*export", re.M)


def test_core_imports_nothing_of_the_kit():
    "core is the floor every module stands on: the layout, atomic writes, hashing; it imports nothing of the kit."
    assert _import_graph()["core"] == set()


def test_no_function_is_longer_than_a_screen():
    long = []
    for module in MODULES:
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long.append(f"{module.stem}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long


def test_the_study_layout_is_spelled_once():
    "Only abovqa.core knows where a stage's table lives (prose may name it); everything else asks `Study(work)`."
    def spellings(module):
        return sum(isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.split("/")[-1] == "qa.parquet"
                   for node in ast.walk(ast.parse(module.read_text())))
    spelled = {m.stem: spellings(m) for m in MODULES}
    assert {m: n for m, n in spelled.items() if n} == {"core": 1}


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
