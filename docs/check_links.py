"""Check the built site's internal links: every `href` and `src` of every page that points inside the
site names a file of the site and, when it has a `#fragment`, an element of that page with that `id`
(or an `<a name=...>`). External links (with a scheme such as https: or mailto:) are counted, not
fetched: CI has no network, and sphinx's `linkcheck` builder needs one.

    python docs/check_links.py docs/_build/html      # run by `make docs` and `make docs-fast`

Exits 1 listing each broken link as `page: href (what is missing)`."""
from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

LINK_ATTRIBUTES = ("href", "src")


class _Page(HTMLParser):
    """The links a page makes and the fragment targets (ids and anchor names) it holds."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.targets: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.links += [attributes[name] for name in LINK_ATTRIBUTES if attributes.get(name)]
        self.targets.update(attributes[name] for name in ("id", "name") if attributes.get(name)
                            if name == "id" or tag == "a")


def _parse(page: Path) -> _Page:
    parser = _Page()
    parser.feed(page.read_text(encoding="utf-8", errors="replace"))
    return parser


def _pages(site: Path) -> list[Path]:
    """The site's pages, without the theme's templates under _static."""
    return [page for page in sorted(site.rglob("*.html")) if "_static" not in page.relative_to(site).parts]


def _broken(link: str, page: Path, site: Path, targets) -> str | None:
    """What `link` of `page` misses (a file or an id), or None when it resolves."""
    url = urlparse(link)
    target = (page.parent / unquote(url.path)).resolve() if url.path else page
    if target.is_dir():
        target = target / "index.html"
    shown = target.relative_to(site) if target.is_relative_to(site) else target
    if not target.is_file():
        return f"no file {shown}"
    fragment = unquote(url.fragment)
    if fragment and target.suffix == ".html" and fragment not in targets(target):
        return f"no id {fragment!r} in {shown}"
    return None


def check(site: Path) -> tuple[list[str], int]:
    """The broken internal links (one line each) and the number of external links (not fetched)."""
    site = site.resolve()
    cache: dict[Path, _Page] = {}

    def page_of(path: Path) -> _Page:
        if path not in cache:
            cache[path] = _parse(path)
        return cache[path]

    broken, external = [], 0
    for page in _pages(site):
        for link in page_of(page).links:
            if urlparse(link).scheme or urlparse(link).netloc:
                external += 1
            elif missing := _broken(link, page, site, lambda target: page_of(target).targets):
                broken.append(f"{page.relative_to(site)}: {link} ({missing})")
    return broken, external

if __name__ == "__main__":
    site = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/_build/html")
    if not any(site.rglob("*.html")):
        sys.exit(f"no HTML pages under {site}: build the site first (make docs-fast)")
    broken, external = check(site)
    print("\n".join(broken) if broken else
          f"{site}: every internal link and anchor resolves ({external} external links, not fetched)")
    sys.exit(1 if broken else 0)
