"""spm_lib: the Sales Performance Management reporting library (KPIs, trust checks, reports)."""

from spm_lib.errors import SpmError

__all__ = ["SpmError"]
__version__ = "0.1.0"
