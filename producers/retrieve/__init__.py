"""Cohort retrieval: a trust's archive queried (C-FIND) for a cohort's patients and the
matching studies retrieved (C-MOVE or C-GET) to that trust's own receiver, off-peak and
rate-limited, with state in the box's own database (docs/retrieve.md).

``config`` owns the trust file's ``[retrieve]`` table, ``rows`` the cohort file, ``api`` the
entry point that stores validated rows, ``runner`` the cohort process, ``scu`` and ``forward``
the DICOM side. The ``smartbox cohort`` commands are the composition root's
(``smartbox/app/cohort_cli.py``, ``cohort_report.py``).
"""
