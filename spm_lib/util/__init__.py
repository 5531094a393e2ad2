"""Plumbing every layer may use: frame helpers and the process memory policy of large runs.
"""

__all__ = ['frames', 'memory']
