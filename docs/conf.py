"""Sphinx configuration of ntklab's documentation (`make docs`; `make docs-fast` in CI).

Sphinx with autodoc/autosummary (the API reference from the docstrings, numpy-style sections read
by napoleon), MyST (pages in Markdown with $...$ math, and the experiments' own report.md files),
sphinx-gallery (examples/*.py executed at build time, figures embedded) and the PyData theme.
NTKLAB_DOCS_FAST=1 runs the gallery at small sizes (each example well under a minute)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import ntklab  # noqa: E402
from generate_experiment_pages import generate  # noqa: E402

project = "ntklab"
author = "the ntklab developers"
copyright = "2026, the ntklab developers"
release = version = ntklab.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",   # MathJax 3 copied into the site: formulas render without a network
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "runs/**"]
templates_path = ["_templates"]

autosummary_generate = True
autodoc_default_options = {
    "members": True, "show-inheritance": False,
    # scikit-learn's own machinery, documented by scikit-learn; and the layer protocol that
    # serial() drives (documented for layer authors in arch/layer.py), so that a layer's page leads
    # with what a user calls: `kernel`, `module`
    "exclude-members": "set_fit_request, set_predict_request, set_score_request, "
                       "get_metadata_routing, get_params, set_params, score, "
                       "build, kernel_map, inputs_map, input_state, pair_entries, block_size_for, "
                       "hyperparameter_tensors, label",
}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_mock_imports = []
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False

default_role = "code"        # `x` in a docstring is code, as the docstrings are written
smartquotes = False          # "alpha" stays a string literal

FAST = os.environ.get("NTKLAB_DOCS_FAST", "0") == "1"
sphinx_gallery_conf = {
    "examples_dirs": str(HERE.parent / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "show_memory": False,
    "within_subsection_order": "FileNameSortKey",
    "write_computation_times": False,   # its page loads DataTables and jQuery from CDNs
}
os.environ.setdefault("NTKLAB_DOCS_FAST", "1" if FAST else "0")

html_theme = "pydata_sphinx_theme"
html_title = f"ntklab {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 7,
}
html_static_path = ["_static"]
html_css_files = ["ntklab.css"]   # wide tables wrap their code and scroll instead of being cut off
suppress_warnings = ["config.cache"]

# experiment pages from the run folders in docs/runs/ (written by `ntklab run NAME`)
generate(HERE / "runs", HERE / "experiments")


def _cli_help(path: Path) -> None:
    """The `ntklab` command's help texts, from click itself, for the API page."""
    from click.testing import CliRunner

    from ntklab.lab.cli import main
    runner = CliRunner()
    sections = []
    for args in ([], ["run"], ["kernel"], ["list"]):
        result = runner.invoke(main, [*args, "--help"], prog_name="ntklab", terminal_width=100)
        if result.exit_code != 0:
            raise RuntimeError(f"ntklab {' '.join(args)} --help failed: {result.output}")
        sections.append(f"$ ntklab {' '.join([*args, '--help'])}\n{result.output}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(sections))


_cli_help(HERE / "generated" / "cli_help.txt")


def plain_text_to_rest(app, what, name, obj, options, lines: list[str]) -> None:
    """ntklab's docstrings are plain text with ASCII formulas (`||K alpha - y||^2 / (2 |y|)`,
    indented formula lines): make them valid reStructuredText without changing what they say.
    `|` is escaped outside doctest lines, and an indented run of lines is set off by blank
    lines, so that it renders as an indented block."""
    out, previous = [], None
    for line in lines:
        stripped = line.lstrip()
        doctest = stripped.startswith((">>>", "..."))
        if not doctest:
            line = line.replace("|", "\\|")
        if stripped and previous is not None and previous.strip():
            indent = len(line) - len(stripped)
            previous_indent = len(previous) - len(previous.lstrip())
            continues = previous.rstrip().endswith("::") or previous.lstrip().startswith((">>>", "..."))
            if indent != previous_indent and not continues and not doctest and not stripped.startswith(":"):
                out.append("")
        out.append(line)
        previous = line
    lines[:] = out


VIEWCODE_BACKLINKS: dict[str, str] = {}   # "#wrong-id" -> "#right-id" of the source pages' [docs] links


def find_wrong_viewcode_backlinks(app):
    """sphinx.ext.viewcode links each object of a source file back to its documentation as
    `#<module>.<name>`, with the module under which the file's *first* documented object appears:
    `ntklab.kernels.MonteCarloKernel`, documented beside `ntklab.monte_carlo_kernel` from the same
    file, got `#ntklab.MonteCarloKernel`, which no page has. Each such link is mapped to the id
    the object has on its page (`fix_viewcode_backlinks` rewrites it); docs/check_links.py
    reports any other broken link."""
    objects = app.env.get_domain("py").objects
    for entry in getattr(app.env, "_viewcode_modules", {}).values():
        if entry:
            _code, _tags, used, refname = entry
            for name, docname in used.items():
                if f"{refname}.{name}" not in objects:
                    VIEWCODE_BACKLINKS.update({f'#{refname}.{name}"': f'#{found.node_id}"'
                                               for full, found in objects.items()
                                               if found.docname == docname and full.endswith(f".{name}")})
    return []


def fix_viewcode_backlinks(app, pagename, templatename, context, doctree):
    """The source pages' [docs] links found wrong by `find_wrong_viewcode_backlinks`, corrected."""
    if pagename.startswith("_modules/") and "body" in context:
        for wrong, right in VIEWCODE_BACKLINKS.items():
            context["body"] = context["body"].replace(wrong, right)


def setup(app):
    app.connect("autodoc-process-docstring", plain_text_to_rest, priority=600)
    app.connect("html-collect-pages", find_wrong_viewcode_backlinks, priority=499)   # before viewcode
    app.connect("html-page-context", fix_viewcode_backlinks)
