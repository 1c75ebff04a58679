"""The documentation cannot drift from the code: every docstring example in the package runs as
a doctest, and every Python block of the README and the documentation pages runs as written.
(`make docs-fast` in CI also builds the site with warnings as errors.)"""
import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import matplotlib
import pytest

import ntklab

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name for m in pkgutil.walk_packages(ntklab.__path__, "ntklab.")
                 if not m.name.endswith("__main__"))


def docstring_tests():
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in MODULES:
        for test in finder.find(importlib.import_module(name)):
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
