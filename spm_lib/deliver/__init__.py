"""Delivery: each owner's email (HTML, text, images, attachment), SMTP, the schedule.
"""

__all__ = ['compose', 'images', 'schedule', 'smtp']
