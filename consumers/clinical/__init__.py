"""Clinical data intake: a trust's clinical records, linked to its images by the same pseudonym.

``smartbox clinical submit --trust CODE FILE`` reads a CSV or JSON file (``rows``), checks
every row against ``clinical.submission`` v1 and the checks a schema cannot express
(``validate``: NHS number check digit, real dates, date order), pseudonymises the valid rows
exactly as the anonymiser pseudonymises the trust's images (``record``: the same keyed patient
pseudonym and the same per-patient date shift), and publishes each as ``clinical.arrived``
(``submit``). ``smartbox clinical stage`` stages them and records them for export (``stage``);
the exporter carries them in the trust's next signed batch (``export``) and the national
reference consumer archives them and links them to the patient's studies (``national``).
Details: ``docs/clinical.md``.
"""
