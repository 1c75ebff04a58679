"""The laboratory on top of the library: the command line (`cli`), datasets (`data`), run
folders and reports (`report`), fits, the studies (computations of the experiments) and the
registered experiments (`ntklab run NAME`).  The library never imports the lab."""


def main() -> None:
    """The `ntklab` command: the command line, or a one-line install hint when the lab extra is
    missing (a bare `pip install ntklab` installs the command too)."""
    from .._core.extras import MissingExtra
    try:
        from .cli import main as command_line
    except MissingExtra as err:
        raise SystemExit(f"ntklab: {err}") from None
    command_line()
