"""Live sessions: the HTTP layer of `spm serve` and its gate (sessions, kernel binding, the kernel budget,
log redaction), the kernel's side of a request, and the interactive widgets.
"""

__all__ = ['kernels', 'log_redact', 'request', 'serve', 'sessions', 'widgets']
