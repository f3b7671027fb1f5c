"""fastsamp: fused kernels for diffusion-based sampling."""
from . import ops, schedules
from .backends import availability
from .schedules import VE, VP

__version__ = "0.1.0"
__all__ = ["ops", "schedules", "VP", "VE", "availability", "__version__"]
