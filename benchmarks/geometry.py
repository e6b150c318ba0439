"""Mesh loading and lattice fill timings for the bundled meshes and procedural shapes (CPU)."""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

from physmorph.geometry import MeshRepairWarning, fill_mesh, load_mesh, make_shape

GRID = {"box_min": (-16.0, -16.0, -16.0), "box_max": (16.0, 16.0, 16.0)}


def timed(function, repeats: int) -> tuple[float, object]:
    """Median wall time of `function()` in seconds over `repeats` runs, and its last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--meshes", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "meshes")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    bodies = {}
    load_times = {}
    for name in ("isosphere", "bunny", "spot"):
        path = args.meshes / f"{name}.obj"
        if path.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MeshRepairWarning)
                load_times[name], bodies[name] = timed(lambda path=path: load_mesh(path), args.repeats)
    for name in ("sphere", "torus", "dumbbell", "blob"):
        load_times[name], bodies[name] = timed(lambda name=name: make_shape(name), args.repeats)

    print(f"{'body':<10} {'faces':>7} {'load s':>7} {'ppc':>4} {'points':>8} {'fill s':>7}")
    for name, mesh in bodies.items():
        for ppc in (1, 2, 3, 4):
            seconds, points = timed(
                lambda mesh=mesh, ppc=ppc: fill_mesh(mesh, dx=1.0, points_per_cell_cuberoot=ppc, density=75.0, **GRID),
                args.repeats,
            )
            print(
                f"{name:<10} {len(mesh.faces):>7} {load_times[name]:>7.3f} {ppc:>4} {points.count:>8} {seconds:>7.3f}"
            )


if __name__ == "__main__":
    main()
