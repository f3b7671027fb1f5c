"""fastsamp: fused kernels for diffusion-based sampling."""
from . import ops, profiling, schedules
from .backends import availability
from .ops._checks import set_validation, validation, validation_enabled
from .profiling import profile
from .schedules import VE, VP

__version__ = "0.1.0"
__all__ = ["ops", "schedules", "VP", "VE", "availability", "set_validation", "validation", "validation_enabled",
           "profiling", "profile", "__version__"]
