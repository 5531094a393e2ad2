"""The domain's own concepts, independent of any data source: fiscal periods, the owner hierarchy, the data
contract (tables and columns), the CRM's deal pages and the signed links that grant a viewer an owner's reports.
"""

__all__ = ['contract', 'crm', 'links', 'org', 'periods']
