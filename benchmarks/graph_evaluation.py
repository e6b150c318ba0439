"""Benchmark: one Adam evaluation (rollout, loss, backward) of the reference config, eager and as CUDA graphs.

    python benchmarks/graph_evaluation.py --meshes ../shared/meshes [--evaluations 20] [--kernels 8]

Prints the capture's seconds (physmorph.optimize.graphs: warm-up evaluations and the recording;
the first call also compiles the Triton kernels unless their cache is warm), then a table of
milliseconds per evaluation with its backward, eager and replayed (the median of `--evaluations`,
each synchronised), and the GPU kernels that take the most of the replays' time. CUDA only.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import torch

from physmorph.config import load_config
from physmorph.optimize.episode import EpisodeProblem
from physmorph.optimize.graphs import captured_evaluation
from physmorph.optimize.setup import build_setup

REFERENCE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sphere_to_bunny.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meshes", type=Path, required=True, help="folder with isosphere.obj and bunny.obj")
    parser.add_argument("--evaluations", type=int, default=20)
    parser.add_argument("--kernels", type=int, default=8, help="rows of the replay's kernel profile")
    arguments = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = load_config(REFERENCE_CONFIG)
        config.source.mesh = str(arguments.meshes.resolve() / "isosphere.obj")
        config.target.mesh = str(arguments.meshes.resolve() / "bunny.obj")
        setup = build_setup(config, torch.device("cuda"))
    problem = EpisodeProblem.of(setup, setup.initial, config.optimization)
    rates = problem.zero_rates().requires_grad_()
    print(
        f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; particles {setup.initial.num_particles}, "
        f"target points {setup.target_points.shape[0]}, control rates {tuple(rates.shape)}"
    )
    start = time.perf_counter()
    captured = captured_evaluation(problem, rates)
    torch.cuda.synchronize()
    if captured is None:
        raise SystemExit("the evaluation was not captured (see the warning above)")
    print(f"capture: {time.perf_counter() - start:.2f} s")

    def eager() -> None:
        loss, _ = problem.loss_and_distance(problem.rollout(problem.controls_from_rates(rates)))
        loss.backward()

    def replayed() -> None:
        loss, _, _ = captured(rates, problem.initial)
        loss.backward()

    print("| evaluation + backward | median ms |\n|---|---|")
    for name, evaluate in (("eager", eager), ("CUDA graphs", replayed)):
        times = []
        for _ in range(arguments.evaluations + 3):
            rates.grad = None
            torch.cuda.synchronize()
            start = time.perf_counter()
            evaluate()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        print(f"| {name} | {1e3 * statistics.median(times[3:]):.2f} |")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        for _ in range(5):
            rates.grad = None
            replayed()
        torch.cuda.synchronize()
    print(profile.key_averages().table(sort_by="cuda_time_total", row_limit=arguments.kernels))


if __name__ == "__main__":
    main()
