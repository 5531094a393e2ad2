"""Run folders: where a cube is written and read, its lock, the owners' views, pruning of old runs.
"""

__all__ = ['prune', 'runfolder', 'views']
