"""The only place that computes: the cube of every KPI, trust check, forecast, target and driver tree for
every owner, in one vectorised pass (`cube.compute_cube`).
"""

__all__ = ['context', 'cube', 'decomposition', 'forecast', 'slices', 'targets', 'trust']
