"""What outlives runs, in the state database: the action register, the send ledger, revoked links.
"""

__all__ = ['actions', 'db', 'ledger', 'revocations']
