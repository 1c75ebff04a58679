"""Check, in a headless browser with the network off, that every formula of the built site renders:
each page with formulas is opened in headless Chromium (every host name unresolvable, so nothing
can come from the network), MathJax runs from the site's own files, and the page's DOM afterwards
must hold at least one rendered formula (`mjx-container`) per formula of the source and no raw TeX
delimiter (\\( \\) \\[ \\]) left in its text.

    python docs/check_rendered.py docs/_build/html      # run by `make docs` and `make docs-fast`

Without Chromium (`apt-get install chromium`) it says so and checks nothing (exit 0): the static
check `docs/check_offline.py` still runs. Exits 1 listing each page whose formulas stay raw."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-extensions", "--no-first-run",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=20000", "--dump-dom"]
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]")


class _VisibleText(HTMLParser):
    """The text of a page outside scripts, styles, code and MathJax's own assistive copies."""

    SKIPPED = {"script", "style", "pre", "code", "mjx-assistive-mml", "textarea"}

    def __init__(self):
        super().__init__()
        self.depth = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIPPED:
            self.depth += 1

    def handle_endtag(self, tag):
        if tag in self.SKIPPED and self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if not self.depth:
            self.text.append(data)


def browser() -> str | None:
    """The first headless-capable browser on the PATH, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def formulas_in_source(page: Path) -> int:
    """How many formulas Sphinx wrote into the page (elements of class "math")."""
    return len(re.findall(r'class="math[ "]', page.read_text(encoding="utf-8", errors="replace")))


def raw_tex(html: str) -> list[str]:
    """The TeX delimiters left in a page's visible text."""
    parser = _VisibleText()
    parser.feed(html)
    return RAW_TEX.findall("".join(parser.text))


def rendered(executable: str, page: Path) -> str:
    """The page's DOM after its scripts ran, offline."""
    result = subprocess.run([executable, *FLAGS, page.resolve().as_uri()], capture_output=True, text=True,
                            timeout=120, check=False)
    return result.stdout


def page_problems(executable: str, page: Path, name: str) -> list[str]:
    """What is wrong with one page's formulas after rendering ([] when they all render)."""
    expected = formulas_in_source(page)
    dom = rendered(executable, page)
    if not dom.strip():
        return [f"{name}: the browser returned no page"]
    found = []
    containers = dom.count("<mjx-container")
    if containers < expected:
        found.append(f"{name}: {expected} formulas in the source, {containers} rendered by MathJax")
    raw = raw_tex(dom)
    if raw:
        found.append(f"{name}: {len(raw)} raw TeX delimiter(s) left in the text after rendering")
    return found


def problems(site: Path, executable: str) -> tuple[list[str], int]:
    """The problems over every page with formulas (or TeX delimiters in its text), and how many
    pages were opened."""
    pages = [page for page in sorted(site.rglob("*.html")) if "_static" not in page.relative_to(site).parts
             and (formulas_in_source(page) or raw_tex(page.read_text(encoding="utf-8", errors="replace")))]
    found = []
    for page in pages:
        found += page_problems(executable, page, str(page.relative_to(site)))
    return found, len(pages)


if __name__ == "__main__":
    site = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/_build/html")
    if not any(site.rglob("*.html")):
        sys.exit(f"no HTML pages under {site}: build the site first (make docs-fast)")
    executable = browser()
    if executable is None:
        print("check_rendered: no Chromium on this machine (apt-get install chromium): rendered formulas "
              "not checked; the static check docs/check_offline.py still ran")
        sys.exit(0)
    issues, opened = problems(site, executable)
    print("\n".join(issues) if issues else f"{site}: every formula of {opened} page(s) renders offline in {executable}")
    sys.exit(1 if issues else 0)
