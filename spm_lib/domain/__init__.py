"""The domain's own concepts, independent of any data source: fiscal periods, the owner hierarchy, the data
contract (tables and columns) and the signed links that grant a viewer an owner's reports.
"""

__all__ = ['contract', 'links', 'org', 'periods']
