"""The batch: the warm-kernel papermill engine, one report per owner on a pool of workers, HTML export.
"""

__all__ = ['export', 'runner', 'warm']
