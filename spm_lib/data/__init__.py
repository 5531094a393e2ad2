"""From the CRM to contract tables: sources, column mapping, validation, data-quality findings, as-of
reconstruction of history, the demo company. `load.load_dataset(cfg)` is the entry point.
"""

__all__ = ['asof', 'demo', 'load', 'mapping', 'quality', 'sources', 'validate']
