"""The `physmorph` command: parses arguments and calls the library."""

from __future__ import annotations

import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import Optional

import typer

from physmorph.errors import PhysmorphError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Physically based shape morphing.")


def _demo_config() -> Path:
    return Path(str(resources.files("physmorph") / "configs" / "demo.yaml"))


def _fail(error: PhysmorphError) -> None:
    typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


def _show_warnings() -> None:
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)

    warnings.showwarning = show


@app.command()
def morph(
    config: Optional[Path] = typer.Argument(None, help="YAML config; omitted: the built-in demo"),  # noqa: UP045
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: the config's output_dir)"),  # noqa: UP045
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or auto (overrides the config)"),  # noqa: UP045
    resume: bool = typer.Option(False, "--resume", help="continue after the last finished episode"),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adam or reference (overrides the config)"),  # noqa: UP045
    episodes: Optional[int] = typer.Option(None, "--episodes", help="number of episodes (overrides num_animations)"),  # noqa: UP045
    e2e: bool = typer.Option(False, "--e2e", help="end to end: image losses through the renderer (mode: e2e)"),
) -> None:
    """Optimise controls so the source shape morphs into the target; writes epNNN/ folders,
    summary.json, loss.png and morph.mp4."""
    from physmorph.config import load_config
    from physmorph.optimize.run import run_morph
    from physmorph.settings import from_mapping

    _show_warnings()
    try:
        settings = load_config(config or _demo_config())
        overrides = {"device": device, "optimizer": optimizer, "num_animations": episodes}
        if any(v is not None for v in overrides.values()):
            from dataclasses import asdict

            from physmorph.config import OptimizationConfig

            merged = asdict(settings.optimization) | {k: v for k, v in overrides.items() if v is not None}
            settings.optimization = from_mapping(OptimizationConfig, merged, "optimization")
        if e2e:
            settings.mode = "e2e"
        target = out or Path(settings.output_dir)
        summary = run_morph(settings, target, resume=resume)
    except PhysmorphError as error:
        _fail(error)
        return
    first, last = summary["episodes"][0], summary["episodes"][-1]
    change = ""
    if first["chamfer_before"] is not None:
        change = f": Chamfer {first['chamfer_before']:.3f} → {last['chamfer_after']:.3f}"
    typer.echo(
        f"{summary['num_particles']} particles on {summary['device']}{change} over "
        f"{len(summary['episodes'])} episodes; results in {target}/"
    )


@app.command()
def render(
    run_dir: Path = typer.Argument(..., help="folder of a finished `physmorph morph` run"),
    episode: Optional[int] = typer.Option(None, "--episode", help="episode to render (default: all)"),  # noqa: UP045
    views: int = typer.Option(1, "--views", help="orbit cameras per step"),
    size: str = typer.Option("512x512", "--size", help="image size WIDTHxHEIGHT"),
    ply: bool = typer.Option(False, "--ply", help="also write each step's Gaussians as a 3DGS PLY"),
) -> None:
    """Render a run's trajectory with Gaussians: per-step rgb/alpha/depth/normal PNGs and a video."""
    from physmorph.optimize.render_run import parse_size, render_run

    _show_warnings()
    try:
        written = render_run(run_dir, episode, views, parse_size(size), ply)
    except PhysmorphError as error:
        _fail(error)
        return
    typer.echo(f"wrote {len(written)} files under {run_dir}/")


@app.command()
def simulate(
    config: Path = typer.Argument(..., help="YAML config of a forward simulation"),
    out: Path = typer.Option(Path("outputs/simulate"), "--out", help="output folder"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or auto"),  # noqa: UP045
) -> None:
    """Run a forward simulation (no optimisation); writes trajectory.npz, final.ply and previews."""
    from physmorph.optimize.forward import load_simulate_config, run_simulation

    _show_warnings()
    try:
        settings = load_simulate_config(config)
        if device is not None:
            settings.device = device
        written = run_simulation(settings, out)
    except PhysmorphError as error:
        _fail(error)
        return
    typer.echo(f"wrote {len(written)} files to {out}/")


def main() -> None:
    sys.exit(app())
