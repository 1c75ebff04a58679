"""Experiment pages from real run folders: for every `docs/runs/NAME/` written by
`ntklab run NAME --out docs/runs/NAME` (`make docs-runs`), a page `experiments/NAME.md` with what
the experiment reproduces (its registry description), the command, and the run's own report.md
(tables and figures) included verbatim, plus an index; nothing is pasted by hand."""
from __future__ import annotations

import json
import shutil
from pathlib import Path


def generate(runs: Path, out: Path) -> list[str]:
    """Write out/NAME.md and out/index.md for each run folder in `runs`; returns the names."""
    from ntklab.lab.experiments import REGISTRY
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.md"):
        stale.unlink()
    names = []
    for folder in sorted(p for p in runs.glob("*") if (p / "report.md").is_file()):
        name = folder.name
        if name not in REGISTRY:
            raise ValueError(f"docs/runs/{name}: no experiment of that name (ntklab list)")
        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        figures = out / "figures" / name
        if figures.exists():
            shutil.rmtree(figures)
        if (folder / "figures").is_dir():
            shutil.copytree(folder / "figures", figures)
        report = (folder / "report.md").read_text().replace("](figures/", f"](figures/{name}/")
        body = report.split("\n", 1)[1] if report.startswith("# ") else report
        title = report.split("\n", 1)[0][2:] if report.startswith("# ") else name
        title = title.removeprefix(f"{name}: ")   # reports start "# NAME: ...": the page names it once
        source = config.get("provenance", {})
        provenance = ", ".join([*(f"{k} {v}" for k, v in source.get("versions", {}).items()),
                                *(f"{v} {k}" for k, v in source.get("machine", {}).items() if k == "cpus")])
        (out / f"{name}.md").write_text("\n".join([
            f"# `{name}`: {title}", "",
            f"*Reproduces:* {REGISTRY[name].summary}", "",
            "```bash", f"ntklab run {name}          # the default run shown below", "```", "",
            f"The page below is the report of a real default run (`docs/runs/{name}/`)"
            + (f"; provenance: {provenance}." if provenance else "."), "",
            body.replace("\n# ", "\n## ")]))
        names.append(name)
    missing = sorted(set(REGISTRY) - set(names))
    (out / "index.md").write_text("\n".join([
        "# Experiments", "",
        "Every headline result is a reproducible experiment, `ntklab run NAME`, that writes its "
        "tables and figures into a run folder. The pages below are generated at build time from "
        "the run folders of real default runs in `docs/runs/`.", "",
        "```{toctree}", ":maxdepth: 1", "", *names, "```", "",
        *([f"Not yet run for these pages: {', '.join(f'`{m}`' for m in missing)} "
           "(`make docs-runs` runs every experiment)."] if missing else [])]))
    return names
