"""Cohort retrieval: a trust's archive queried (C-FIND) for a cohort's patients and the
matching studies retrieved (C-MOVE or C-GET) to that trust's own receiver, off-peak and
rate-limited, with state in the box's own database (docs/retrieve.md).

``config`` owns the trust file's ``[retrieve]`` table, ``rows`` the cohort file, ``api`` the
entry point that stores validated rows, ``runner`` the cohort process, ``cli`` and ``report``
the ``smartbox cohort`` commands.
"""
