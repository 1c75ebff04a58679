"""Every experiment's quick run (slow): the scaffold's files, figures whose text does not overlap,
and a negative control per experiment (issue 30): a deliberately wrong prediction, set through
`config`, turns its claim's verdict to "fails", while the experiment's own prediction does not fail
on the same measurement (the verdict depends only on prediction, tolerance, measurement and s.e.)."""
import itertools
import json

import matplotlib.text
import pytest

from ntklab.lab import experiments
from ntklab.lab.report import strict_json
from ntklab.lab.claims import verdict
from ntklab.lab.report import RunFolder

# experiment -> (settings that give the claim a standard error at quick sizes, the claim's field,
# the wrong change, the index of the claim's first row in the claims table)
NEGATIVE_CONTROLS = {
    "cntk-table": ({"prediction_data": "digits"}, "cntk_gap_over_v", {"prediction": 60.0}, 0),
    "dimension-sweep": ({}, "eigenlearning_factor", {"prediction": 2.0}, 0),
    "ensemble-mean": ({}, "early_coefficient", {"prediction": 10.0}, 0),
    "finite-width": ({}, "relative_variance", {"prediction": 2.0}, 0),
    "kernel-gd": ({}, "network_remainder_order", {"prediction": 1.0}, 2),
    "lazy-training": ({}, "weight_change", {"prediction": -1.0}, 0),
    "linearization": ({}, "network_vs_linearized", {"prediction": -2.0}, 0),
    "nearly-kernel": ({}, "eps_second_order", {"prediction": 1.0}, 2),
    "overparameterization": ({}, "peak_location", {"prediction": 2.0}, 0),
    "resnet-kernels": ({"prediction_data": "digits-shifted"}, "local_pooling_gain",
                       {"prediction": 60.0, "tolerance": 5.0}, 0),
    "sample-complexity": ({"grid": [500], "seeds": 3, "m": 1000}, "algorithm1_learns", {"prediction": 1.0}, 1),
    "sparse-coding": ({"seeds": 2}, "recovery", {"prediction": 0.5}, 0),
    "transfer": ({"seeds": 2, "pretrain": [1, 10000], "claim_pretrain": 10000}, "few_samples",
                 {"prediction": 1.0, "tolerance": 0.2}, 0),
}


def text_boxes(fig) -> list[tuple[str, object]]:
    """(description, window extent) of every text element drawn on `fig`: titles, axis labels,
    tick labels inside the view, legends (one box each), the suptitle and free texts."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    elements = []
    for k, ax in enumerate(fig.axes):
        texts = [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if low - 1e-9 * abs(high - low) <= tick.get_loc() <= high + 1e-9 * abs(high - low):
                    texts += [tick.label1, tick.label2]
        elements += [(f"panel {k} {type(t).__name__} {t.get_text()!r}", t.get_window_extent(renderer))
                     for t in texts if isinstance(t, matplotlib.text.Text) and t.get_visible() and t.get_text()]
        if ax.get_legend() is not None:
            elements.append((f"panel {k} legend", ax.get_legend().get_window_extent(renderer)))
    for legend in fig.legends:
        elements.append(("figure legend", legend.get_window_extent(renderer)))
    texts = list({id(t): t for t in (fig._suptitle, *fig.texts) if t is not None}.values())   # suptitle is a text
    elements += [(f"figure text {t.get_text()!r}", t.get_window_extent(renderer)) for t in texts
                 if t.get_visible() and t.get_text()]
    return elements


def overlaps(fig, *, pixels: float = 1.0) -> list[str]:
    """Pairs of text elements whose boxes intersect by more than `pixels` in both directions."""
    found = []
    for (a, box_a), (b, box_b) in itertools.combinations(text_boxes(fig), 2):
        width = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
        height = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
        if width > pixels and height > pixels:
            found.append(f"{a} overlaps {b}")
    return found


def test_the_overlap_check_finds_overlapping_text():
    """The check itself, on a figure made to fail it (negative control) and its fixed version."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.set_xticks(range(30))
    ax.set_xticklabels([f"label {i}" for i in range(30)])
    ax.set_title("a title")
    ax.set_ylabel("a long multi\nline label that is\nvery long indeed")
    assert any("overlaps" in message for message in overlaps(fig))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([1, 2], [1, 2], label="a line")
    ax.set(xlabel="x", ylabel="y", title="a title")
    ax.legend()
    fig.tight_layout()
    assert overlaps(fig) == []
    plt.close(fig)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(experiments.REGISTRY))
def test_every_experiment_writes_its_files_clean_figures_and_claims_that_can_fail(name, tmp_path, monkeypatch):
    """One scaffold: config.json with provenance, summary.json with the claims, metrics.csv, figures
    whose panels have axis labels, distinct titles and no overlapping text, report.md with the claims
    table; and the negative control of NEGATIVE_CONTROLS."""
    save, problems = RunFolder.save_figure, []

    def checked(self, figure_name, fig):
        suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
        titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
        if len(set(titles)) < len(titles):
            problems.append(f"{figure_name}: panels share a title: {titles}")
        for ax in fig.axes:
            if hasattr(ax, "_colorbar") or not (ax.lines or ax.collections or ax.images or ax.patches):
                continue
            if not (ax.get_xlabel() and ax.get_ylabel()) or not (ax.get_title() or suptitle):
                problems.append(f"{figure_name}: panel {ax.get_title()!r} lacks an axis label or a title")
        problems.extend(f"{figure_name}: {message}" for message in overlaps(fig))
        return save(self, figure_name, fig)
    monkeypatch.setattr(RunFolder, "save_figure", checked)
    settings, field, wrong, index = NEGATIVE_CONTROLS[name]
    out = tmp_path / name
    summary = experiments.run(name, out, seed=1, quick=True, device="auto", config={**settings, field: wrong})
    for file in ("config.json", "summary.json", "metrics.csv", "report.md"):
        assert (out / file).is_file(), file
    assert list((out / "figures").glob("*.png"))
    assert problems == []
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == name and config["seed"] == 1 and config["quick"] is True
    assert config["provenance"]["versions"]["torch"] and config["provenance"]["machine"]["cpus"]
    # summary.json is the returned summary as strict JSON (a NaN is null there)
    assert json.loads((out / "summary.json").read_text()) == strict_json(summary)
    report = (out / "report.md").read_text()
    assert "| claim | source | prediction | tolerance | measured ± s.e. | verdict | why |" in report
    claim = summary["claims"][index]
    right = getattr(experiments.get(name).config.quick(), field)
    assert claim["claim"].endswith(right.statement)
    assert claim["prediction"] == wrong["prediction"] and claim["verdict"] == "fails", claim
    assert verdict(right.prediction, right.tolerance, claim["measured"], claim["se"]) != "fails", claim
