"""The documentation cannot drift from the code: every docstring example in the package runs as
a doctest, and every Python block of the README and the documentation pages runs as written.
(`make docs-fast` in CI also builds the site with warnings as errors.)"""
import ast
import doctest
import importlib
import importlib.util
import pkgutil
import re
import shutil
import sys
from pathlib import Path

import matplotlib
import pytest

import ntklab
from ntklab._core.extras import MissingExtra

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name for m in pkgutil.walk_packages(ntklab.__path__, "ntklab.")
                 if not m.name.endswith("__main__"))


def docstring_tests():
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except MissingExtra:   # e.g. ntklab.gpytorch without the gpytorch extra (its tests skip too)
            continue
        for test in finder.find(module):
            if test.examples and test.name.startswith(name):   # each object once, where defined
                yield test


DOCTESTS = list(docstring_tests())


def test_there_are_docstring_examples():
    assert len(DOCTESTS) >= 15


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_example(test, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0, f"{test.name}: {runner.failures} failing example(s), see the output above"


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
BLOCKS = [(page, i, block) for page in PAGES if "_build" not in page.parts and "runs" not in page.parts
          and "experiments" not in page.parts
          for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))]


@pytest.mark.parametrize("page, index, block", BLOCKS,
                         ids=[f"{p.relative_to(ROOT)}#{i}" for p, i, _ in BLOCKS])
def test_python_blocks_of_the_pages_run(page, index, block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(block, f"{page.name} block {index}", "exec"), {"__name__": "__docs__"})


def load_script(path: Path):
    """A script of the repository (docs/, benchmarks/) as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCES = [page for page in PAGES if "_build" not in page.parts and "runs" not in page.parts]


def test_no_formula_line_starts_like_a_markdown_list_item():
    """A source line inside a formula that starts with "+ " or "- " becomes a list item in
    Markdown and breaks the formula (two paragraphs of theory/finite_width.md did): put the
    operator at the end of the line before."""
    broken = [f"{page.relative_to(ROOT)}:{number}" for page in SOURCES
              for number, line in enumerate(page.read_text().splitlines(), start=1)
              if re.match(r"[+-] \\", line)]
    assert broken == []


def test_the_offline_check_finds_network_resources_and_missing_mathjax(tmp_path):
    """docs/check_offline.py (run after every site build) on a tiny site: a CDN script, a missing
    local file and a page with formulas but no MathJax are reported; the bundled MathJax passes."""
    check = load_script(ROOT / "docs" / "check_offline.py")
    (tmp_path / "_static" / "mathjax").mkdir(parents=True)
    (tmp_path / "_static" / "mathjax" / "tex-chtml.js").write_text("")
    good = '<script src="_static/mathjax/tex-chtml.js"></script><span class="math">\\(x\\)</span>'
    (tmp_path / "good.html").write_text(good)
    assert check.problems(tmp_path) == []
    (tmp_path / "cdn.html").write_text('<script src="https://cdn.jsdelivr.net/npm/mathjax@4/tex-mml-chtml.js">'
                                       '</script><span class="math">\\(x\\)</span>')
    (tmp_path / "lost.html").write_text('<link rel="stylesheet" href="_static/gone.css">')
    assert check.problems(tmp_path) == [
        "cdn.html: loads https://cdn.jsdelivr.net/npm/mathjax@4/tex-mml-chtml.js from the network",
        "cdn.html: has formulas but does not load MathJax (tex-chtml.js)",
        "lost.html: loads _static/gone.css, which is not in the site"]


def test_the_link_check_finds_missing_pages_and_anchors(tmp_path):
    """docs/check_links.py (run after every site build) on a tiny site: links to an existing page,
    id, anchor name, folder index and image resolve, external links are counted and not fetched;
    a link to a missing page, a missing id on another page and a missing id on the same page are
    reported."""
    check = load_script(ROOT / "docs" / "check_links.py")
    (tmp_path / "guide").mkdir()
    (tmp_path / "guide" / "index.html").write_text('<h1 id="top">x</h1><a name="old-anchor"></a>')
    (tmp_path / "plot.png").write_bytes(b"")
    (tmp_path / "index.html").write_text(
        '<section id="intro"><a href="guide/index.html#top">g</a> <a href="guide/#old-anchor">a</a>'
        '<a href="guide/">d</a> <a href="#intro">here</a> <img src="plot.png"> <a href="#">menu</a>'
        '<a href="https://example.org/page#x">out</a> <a href="mailto:a@b.c">mail</a></section>')
    assert check.check(tmp_path) == ([], 2)
    (tmp_path / "broken.html").write_text('<p id="a"><a href="guide/index.html#bottom">1</a>'
                                          '<a href="gone.html">2</a> <a href="#b">3</a></p>')
    assert check.check(tmp_path)[0] == [
        "broken.html: guide/index.html#bottom (no id 'bottom' in guide/index.html)",
        "broken.html: gone.html (no file gone.html)",
        "broken.html: #b (no id 'b' in broken.html)"]


def documented_names(api: str) -> set[str]:
    """The full names that the autosummary tables of docs/api.md document (each under the
    `currentmodule` before it)."""
    names, module, in_table = set(), "", False
    for line in api.splitlines():
        if found := re.match(r"\.\. currentmodule:: (\S+)", line):
            module, in_table = found[1], False
        elif line.startswith(".. autosummary::"):
            in_table = True
        elif in_table and line.startswith("   ") and not line.strip().startswith(":"):
            names.add(f"{module}.{line.strip()}")
        elif line.strip() and not line.startswith("   "):
            in_table = False
    return names


def ntklab_names_used(source: str) -> set[str]:
    """The full name of every ntklab object a script uses: a name imported from ntklab
    (`from ntklab.lab.data import digits_images`) and the longest attribute chain on an imported
    ntklab module (`nk.predict.solve`, `R.sample` after `from ntklab.lab.studies import
    representation as R`)."""
    tree = ast.parse(source)
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({alias.asname or alias.name.split(".")[0]: alias.name if alias.asname else "ntklab"
                            for alias in node.names if alias.name.split(".")[0] == "ntklab"})
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ntklab":
            aliases.update({alias.asname or alias.name: f"{node.module}.{alias.name}" for alias in node.names})
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}

    def full_name(node) -> str | None:
        if isinstance(node, ast.Name):
            return aliases.get(node.id)
        if isinstance(node, ast.Attribute) and (base := full_name(node.value)):
            return f"{base}.{node.attr}"
        return None

    return {name for node in ast.walk(tree) if isinstance(node, (ast.Name, ast.Attribute))
            and id(node) not in inner and (name := full_name(node))}


def undocumented(used: set[str], documented: set[str]) -> list[str]:
    """The names neither documented nor members of a documented object (a class's methods)."""
    return sorted(name for name in used
                  if not any(".".join(name.split(".")[:k]) in documented for k in range(2, name.count(".") + 2)))


def test_the_gallery_uses_only_names_of_the_api_reference():
    """Every ntklab object an example of the gallery uses is on the API reference page, which
    the gallery links to; a made-up example using internal modules (the engine's tiling, the CLI)
    is reported, name by name."""
    documented = documented_names((ROOT / "docs" / "api.md").read_text())
    used = set().union(*(ntklab_names_used(example.read_text()) for example in (ROOT / "examples").glob("*.py")))
    assert {"ntklab.serial", "ntklab.lab.data.digits_images", "ntklab.lab.studies.quadratic.random_model",
            "ntklab.predict.conjugate_gradients"} <= used and len(used) >= 25
    assert undocumented(used, documented) == []
    internal = ("import ntklab as nk\nfrom ntklab.lab.cli import main as m\nfrom ntklab.kernels import engine\n"
                "nk.Serial.kernel(nk.serial(nk.Relu()), None); m(); engine.tiles(3); nk._core.extras.x")
    assert undocumented(ntklab_names_used(internal), documented) == [
        "ntklab._core.extras.x", "ntklab.kernels.engine.tiles", "ntklab.lab.cli.main"]


@pytest.mark.slow
def test_the_rendering_check_finds_formulas_left_raw(tmp_path):
    """docs/check_rendered.py (run after every site build) in headless Chromium, network off, on a tiny
    site: a page loading the bundled MathJax renders its formula; the same page loading MathJax from a
    CDN, and a page whose `\\(` was never turned into a formula, are reported (negative controls)."""
    check = load_script(ROOT / "docs" / "check_rendered.py")
    executable = check.browser()
    if executable is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium): the rendering check is not run")
    bundled = next(Path(sys.prefix).rglob("sphinx-mathjax-offline/static/mathjax/tex-chtml.js"), None)
    if bundled is None:
        pytest.skip("the docs extra (sphinx-mathjax-offline, the MathJax the site bundles) is not installed")
    shutil.copytree(bundled.parent, tmp_path / "_static" / "mathjax")
    formula = '<p>The kernel <span class="math notranslate nohighlight">\\(K(x, x\') = x^\\top x\'\\)</span>.</p>'
    (tmp_path / "good.html").write_text(f'<html><head><script src="_static/mathjax/tex-chtml.js"></script></head>'
                                        f'<body>{formula}</body></html>')
    assert check.problems(tmp_path, executable) == ([], 1)
    (tmp_path / "cdn.html").write_text('<html><head><script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/'
                                       f'tex-chtml.js"></script></head><body>{formula}</body></html>')
    (tmp_path / "plain.html").write_text("<html><body><p>A formula left as text: \\(x^2\\).</p></body></html>")
    found, opened = check.problems(tmp_path, executable)
    assert opened == 3
    assert found == ["cdn.html: 1 formulas in the source, 0 rendered by MathJax",
                     "cdn.html: 2 raw TeX delimiter(s) left in the text after rendering",
                     "plain.html: 2 raw TeX delimiter(s) left in the text after rendering"]
