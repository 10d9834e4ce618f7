"""Who may do what: users, API tokens, sessions, roles, failed-login throttling, the audit trail.

The web front asks this package (through ``web/security.py``); nothing here imports the web.
"""
