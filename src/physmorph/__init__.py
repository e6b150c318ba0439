"""physmorph: physically based shape morphing with differentiable MPM and Gaussian splatting."""

from physmorph.errors import ConfigError, InputError, PhysmorphError, SimulationDiverged

__version__ = "0.1.0"

__all__ = ["ConfigError", "InputError", "PhysmorphError", "SimulationDiverged", "__version__"]
