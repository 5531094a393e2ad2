"""One owner's report, read from the cube: the sections of the agenda (`core.Report`), its charts and its
HTML markup. Batch, JupyterLab and live pages all render it.
"""

__all__ = ['charts', 'core', 'markup']
