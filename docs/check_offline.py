"""Check that the built site needs no network: every script, stylesheet and font a page loads is a
file of the site, and every page with formulas loads the bundled MathJax (`sphinx-mathjax-offline`).

    python docs/check_offline.py docs/_build/html      # run by `make docs` and `make docs-fast`

Exits 1 listing each page and what it would fetch from elsewhere or what it lacks."""
from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

MATHJAX = "tex-chtml.js"


class _Resources(HTMLParser):
    """The scripts and stylesheets a page loads, and whether it holds formulas."""

    def __init__(self):
        super().__init__()
        self.loads: list[str] = []
        self.has_math = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "script" and attributes.get("src"):
            self.loads.append(attributes["src"])
        if tag == "link" and "stylesheet" in (attributes.get("rel") or "") and attributes.get("href"):
            self.loads.append(attributes["href"])
        if "math" in (attributes.get("class") or "").split():
            self.has_math = True


def problems(site: Path) -> list[str]:
    """One line per page and resource that is not in the site, or per page with formulas but no MathJax."""
    found = []
    for page in sorted(site.rglob("*.html")):
        if "_static" in page.relative_to(site).parts:   # the theme's templates, not pages
            continue
        parser = _Resources()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        name = page.relative_to(site)
        for url in parser.loads:
            parsed = urlparse(url)
            if parsed.scheme or parsed.netloc:
                found.append(f"{name}: loads {url} from the network")
            elif not (page.parent / parsed.path).resolve().is_file():
                found.append(f"{name}: loads {url}, which is not in the site")
        if parser.has_math and not any(urlparse(url).path.endswith(MATHJAX) for url in parser.loads):
            found.append(f"{name}: has formulas but does not load MathJax ({MATHJAX})")
    return found


if __name__ == "__main__":
    site = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/_build/html")
    if not any(site.rglob("*.html")):
        sys.exit(f"no HTML pages under {site}: build the site first (make docs-fast)")
    issues = problems(site)
    print("\n".join(issues) if issues else f"{site}: every page loads only files of the site")
    sys.exit(1 if issues else 0)
