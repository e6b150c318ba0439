"""The `physmorph` command: parses arguments and calls the library."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Optional

import typer

from physmorph.errors import PhysmorphError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Physically based shape morphing.")

DEBUG_HELP = "show the full traceback of an unexpected error"


def _demo_config() -> Path:
    return Path(str(resources.files("physmorph") / "configs" / "demo.yaml"))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@contextmanager
def _user_facing(debug: bool) -> Iterator[None]:
    """Run a command so that a user sees one line per problem: warnings as 'warning: ...', a
    PhysmorphError or an OS error as 'error: ...' with exit code 2, and anything else as one
    line that points to --debug (which re-raises it with its traceback) with exit code 1."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        typer.secho(f"warning: {_one_line(message)}", err=True, fg=typer.colors.YELLOW)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        try:
            yield
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except PhysmorphError as error:
            _fail(str(error), 2)
        except OSError as error:
            where = f" '{error.filename}'" if error.filename else ""
            _fail(f"cannot use{where}: {error.strerror or error}; check the path, its permissions and free space", 2)
        except MemoryError:
            _fail("ran out of memory; use fewer particles (points_per_cell_cuberoot), steps or pixels", 2)
        except Exception as error:
            if debug:
                raise
            _fail(f"unexpected {type(error).__name__}: {error}; rerun with --debug for the full traceback", 1)


def _fail(message: str, code: int) -> None:
    typer.secho(f"error: {_one_line(message)}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=code)


def _guarded(debug: bool, command: Callable[[], None]) -> None:
    with _user_facing(debug):
        command()


@app.command()
def morph(
    config: Optional[Path] = typer.Argument(None, help="YAML config; omitted: the built-in demo"),  # noqa: UP045
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: the config's output_dir)"),  # noqa: UP045
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or auto (overrides the config)"),  # noqa: UP045
    resume: bool = typer.Option(False, "--resume", help="continue after the last finished episode"),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adam or reference (overrides the config)"),  # noqa: UP045
    episodes: Optional[int] = typer.Option(None, "--episodes", help="number of episodes (overrides num_animations)"),  # noqa: UP045
    e2e: bool = typer.Option(False, "--e2e", help="end to end: image losses through the renderer (mode: e2e)"),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Optimise controls so the source shape morphs into the target; writes epNNN/ folders,
    summary.json, loss.png and morph.mp4."""

    def command() -> None:
        from physmorph.config import load_config
        from physmorph.optimize.run import run_morph
        from physmorph.settings import with_overrides

        settings = load_config(config or _demo_config())
        overrides = {"device": device, "optimizer": optimizer, "num_animations": episodes}
        settings.optimization = with_overrides(settings.optimization, "optimization", overrides)
        if e2e:
            settings.mode = "e2e"
        target = out or Path(settings.output_dir)
        summary = run_morph(settings, target, resume=resume)
        first, last = summary["episodes"][0], summary["episodes"][-1]
        change = ""
        if first["chamfer_before"] is not None:
            change = f": Chamfer {first['chamfer_before']:.3f} → {last.get('chamfer_kept', last['chamfer_after']):.3f}"
        diverged = sum(len(record.get("divergences", [])) for record in summary["episodes"])
        warning = f" ({diverged} diverged evaluations, see summary.json)" if diverged else ""
        typer.echo(
            f"{summary['num_particles']} particles on {summary['device']}{change} over "
            f"{len(summary['episodes'])} episodes{warning}; results in {target}/"
        )

    _guarded(debug, command)


@app.command()
def render(
    run_dir: Path = typer.Argument(..., help="folder of a finished `physmorph morph` run"),
    episode: Optional[int] = typer.Option(None, "--episode", help="episode to render (default: all)"),  # noqa: UP045
    views: int = typer.Option(1, "--views", help="orbit cameras per step"),
    size: str = typer.Option("512x512", "--size", help="image size WIDTHxHEIGHT"),
    ply: bool = typer.Option(False, "--ply", help="also write each step's Gaussians as a 3DGS PLY"),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Render a run's trajectory with Gaussians: per-step rgb/alpha/depth/normal PNGs and a video."""

    def command() -> None:
        from physmorph.optimize.render_run import parse_size, render_run

        written = render_run(run_dir, episode, views, parse_size(size), ply)
        typer.echo(f"wrote {len(written)} files under {run_dir}/")

    _guarded(debug, command)


@app.command()
def simulate(
    config: Path = typer.Argument(..., help="YAML config of a forward simulation"),
    out: Path = typer.Option(Path("outputs/simulate"), "--out", help="output folder"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or auto (overrides the config)"),  # noqa: UP045
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Run a forward simulation (no optimisation); writes trajectory.npz, final.ply and previews."""

    def command() -> None:
        from physmorph.optimize.forward import load_simulate_config, run_simulation
        from physmorph.settings import with_overrides

        settings = with_overrides(load_simulate_config(config), "", {"device": device})
        written = run_simulation(settings, out)
        typer.echo(f"wrote {len(written)} files to {out}/")

    _guarded(debug, command)


def main() -> None:
    sys.exit(app())
