"""physmorph: physically based shape morphing with differentiable MPM and Gaussian splatting."""

import os

# OpenMP threads that spin while they wait take the CPU from the threads they wait for when the
# cores are shared: on a loaded 2-core machine one 2-thread demo rollout took 28-32 s wall and
# 14-16 s CPU with spinning, 4-5 s and 2.4 s with passive waits. Set before torch loads its OpenMP
# runtime (so `import physmorph` first), and only where the user has chosen no policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from physmorph.errors import ConfigError, InputError, PhysmorphError, SimulationDiverged

__version__ = "0.1.0"

__all__ = ["ConfigError", "InputError", "PhysmorphError", "SimulationDiverged", "__version__"]
