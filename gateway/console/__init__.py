"""The operations console in the browser (运维控制台): served by the daemon on [console] listen.

auth.py (accounts, lockout, sessions, CSRF), queries.py (one read a page), web.py (the
twisted.web resource), service.py (the listener), templates/ and static/ (no CDN).
"""

ROLES = ("viewer", "operator", "auditor")   # here, not in auth.py: gatewayctl builds its parser without bcrypt
