"""Fixtures of the lab tests: a fake experiment registered with the scaffold."""
from dataclasses import dataclass

import pytest

from ntklab.lab import experiments


@dataclass(frozen=True)
class Settings:
    """A settings dataclass of every kind the scaffold checks."""

    size: int = 3
    rate: float = 0.5
    widths: tuple[int, ...] = (8, 16)
    dims: dict[str, tuple[int, ...]] | None = None
    name: str = "full"
    enabled: bool = True

    @classmethod
    def quick(cls) -> "Settings":
        return cls(size=1, name="quick")


@pytest.fixture()
def fake_experiment(monkeypatch):
    """add(name, run): register `run(folder, cfg, *, seed, device, ...)` as experiment `name`
    with the settings `Settings` (for the length of one test)."""
    def add(name, run, devices=("cpu",)):
        monkeypatch.setitem(experiments.REGISTRY, name, experiments.Experiment(name, "", run, Settings, devices))
    return add
