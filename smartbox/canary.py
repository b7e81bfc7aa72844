"""How a ``smartbox probe`` study is recognised, at every stage that must tell it apart.

Two markers, both set by ``smartbox.synthetic.make_probe_study`` and by nothing else:

* its **patient ID** is ``PROBE_PATIENT_ID`` (no NHS number). The anonymiser compares each
  staged instance's patient pseudonym with that patient's, computed by the trust's own
  de-identifier under the regional key, and marks the study ``synthetic`` (staging manifest and
  ``study.staged``); the exporter then never sends it to the national bucket
  (``consumers.export_canary``). Reserved: no trust may give a real patient this ID.
* its **study instance UID** is a ``2.25`` UID whose upper 64 bits are ``PROBE_UID_TAG`` (a
  version-8 UUID: PS3.5 B.2). The receiver, which reads only the study UID, the SOP instance
  UID and the modality of what it receives, counts those instances as probe instances, not as
  the trust's (``smartbox_probe_instances_received_total``): a canary every 15 minutes must
  not hide a trust whose PACS stopped sending. A random UUID matches by chance with a
  probability of 2^-64.
"""

from __future__ import annotations

import random

PROBE_PATIENT_ID = "SMARTBOX-PROBE"
#: "smartbox" in ASCII with the UUID version nibble set to 8 (the top 64 bits of the UUID)
PROBE_UID_TAG = 0x736D_6172_7462_8F78
_VARIANT = 0x8000_0000_0000_0000  # RFC 4122 variant bits of the low 64


def probe_study_uid(rng: random.Random) -> str:
    """A fresh probe study UID (``2.25.`` + the decimal of a marked version-8 UUID)."""
    low = (rng.getrandbits(64) & 0x3FFF_FFFF_FFFF_FFFF) | _VARIANT
    return f"2.25.{(PROBE_UID_TAG << 64) | low}"


def is_probe_uid(uid: str) -> bool:
    """Whether a study instance UID is a probe's (``probe_study_uid``)."""
    digits = uid[5:] if uid.startswith("2.25.") else ""
    if not digits.isdigit() or len(digits) > 39:
        return False
    value = int(digits)
    return value < 1 << 128 and value >> 64 == PROBE_UID_TAG
