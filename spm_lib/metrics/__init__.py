"""What can be measured: the KPI registry (built-in and custom KPIs, what each needs).
"""

__all__ = ['kpis']
