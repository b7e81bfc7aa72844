"""The one builder of a trust's de-identification policy.

Every entry point asks this module: the anonymiser (for each trust, rebuilt when its trust
file changes), ``smartbox deidentify`` (``--trust CODE``, or the deployment default without
it), ``smartbox withdraw`` and ``smartbox check-config`` (which therefore reports exactly what
would stop the anonymiser). Two parsers drift: ours once gave the governance lead and the
pipeline different output for the same trust file.

Where each setting comes from:

* the trust file (``smartbox.trusts`` parses the file and the receiver's keys; the
  ``[deidentification]`` table is parsed here, ``TABLE_KEYS``): options, mask rules, OCR;
  and, at top level, ``nhs_number_attribute``, ``max_inflated_bytes``, ``max_inflate_ratio``;
* the environment (or ``SMARTBOX_SECRETS_FILE``): ``SMARTBOX_DEID_OPTIONS``, the options of a
  trust whose file names none; ``SMARTBOX_DEID_MAX_DATE_SHIFT_DAYS``, the bound of the
  per-patient date shift. The bound is region-wide on purpose: the shift is derived from the
  patient's region-wide pseudonym, and two trusts with two bounds would shift one patient's
  dates differently, breaking the intervals between their studies.

OCR switched on where ``tesseract`` is not installed is a configuration error here, so a
process stops at start (and check-config says so in one line) instead of failing every study.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smartbox.errors import ConfigError
from smartbox.inflate import InflateLimits
from smartbox.settings import environment
from smartbox.trusts import TrustConfig

from .config import (
    DEFAULT_OPTIONS,
    OPTION_COLUMNS,
    UNKNOWN_NAMES,
    DeidConfigError,
    DeidPolicy,
    mask_rules_from_toml,
    tesseract_path,
)

OPTIONS_ENV = "SMARTBOX_DEID_OPTIONS"
MAX_SHIFT_ENV = "SMARTBOX_DEID_MAX_DATE_SHIFT_DAYS"
DEFAULT_MAX_SHIFT_DAYS = 365

#: the keys of a trust file's ``[deidentification]`` table (``docs/deidentification.md``
#: lists exactly these; a unit test holds the two together)
TABLE_KEYS: tuple[str, ...] = (
    "options",
    "mask_rules",
    "ocr",
    "ocr_scope",
    "ocr_match",
    "ocr_max_frames",
    "unknown_names",
    "allow_list",
)
#: top-level trust-file keys the policy reads (validated by the trust-file parser)
TRUST_KEYS: tuple[str, ...] = ("nhs_number_attribute", "max_inflated_bytes", "max_inflate_ratio")
_OCR_SCOPES = ("masked", "all")
_OCR_MATCHES = ("identifiers", "any_text")


def accepted_trust_keys() -> frozenset[str]:
    """Every trust-file key that changes de-identification, spelt as the docs spell them
    (``nhs_number_attribute``, ``deidentification.options``, ...)."""
    return frozenset(TRUST_KEYS) | {f"deidentification.{k}" for k in TABLE_KEYS}


def _options(text: str, where: str) -> frozenset[str]:
    options = frozenset(o.strip() for o in text.split(",") if o.strip())
    unknown = sorted(options - set(OPTION_COLUMNS))
    if unknown:
        raise DeidConfigError(f"{where}: unknown option {unknown[0]!r}")
    return options


@dataclass(frozen=True)
class PolicyBuilder:
    """The deployment's defaults, and the policy of each trust built from its trust file."""

    default_options: frozenset[str] = DEFAULT_OPTIONS
    max_date_shift_days: int = DEFAULT_MAX_SHIFT_DAYS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PolicyBuilder:
        """The defaults from ``SMARTBOX_DEID_OPTIONS`` and ``SMARTBOX_DEID_MAX_DATE_SHIFT_DAYS``
        (environment, then ``SMARTBOX_SECRETS_FILE``); DeidConfigError naming the variable."""
        env = environment(environ)
        options = DEFAULT_OPTIONS
        if OPTIONS_ENV in env:
            options = _options(env[OPTIONS_ENV], f"environment: {OPTIONS_ENV}")
        shift = DEFAULT_MAX_SHIFT_DAYS
        raw = env.get(MAX_SHIFT_ENV, "").strip()
        if raw:
            if not raw.isdigit() or not 1 <= int(raw) <= 36500:
                raise DeidConfigError(f"environment: {MAX_SHIFT_ENV}: an integer 1-36500 (days)")
            shift = int(raw)
        return cls(options, shift)

    def options_for(self, trust: TrustConfig) -> frozenset[str]:
        """The Annex E options the trust's studies are de-identified with."""
        table = self._table(trust)
        if "options" not in table:
            return self.default_options
        value = table["options"]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _fail(trust, "options", "a list of option names")
        return _options(",".join(value), f"{trust.source_file}: field 'deidentification.options'")

    def for_trust(self, trust: TrustConfig, *, runnable: bool = True) -> DeidPolicy:
        """The trust's policy; DeidConfigError naming the trust file and field.

        ``runnable``: also check that it can run on this machine (OCR needs tesseract), as
        every process that de-identifies must before it starts."""
        table = self._table(trust)
        where = str(trust.source_file)
        rules: tuple[Any, ...] = ()
        if "mask_rules" in table:
            try:
                rules = mask_rules_from_toml(table["mask_rules"])
            except DeidConfigError as exc:
                raise DeidConfigError(f"{where}: field {exc}") from None
        ocr = table.get("ocr", False)
        if not isinstance(ocr, bool):
            raise _fail(trust, "ocr", "true or false")
        scope = table.get("ocr_scope", "masked")
        if scope not in _OCR_SCOPES:
            raise _fail(trust, "ocr_scope", "'masked' or 'all'")
        match = table.get("ocr_match", "identifiers")
        if match not in _OCR_MATCHES:
            raise _fail(trust, "ocr_match", "'identifiers' or 'any_text'")
        frames = table.get("ocr_max_frames", 3)
        if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= 1000:
            raise _fail(trust, "ocr_max_frames", "an integer 1-1000")
        names = table.get("unknown_names", "clean")
        if names not in UNKNOWN_NAMES:
            raise _fail(trust, "unknown_names", "'clean', 'hold' or 'off'")
        allow_list = table.get("allow_list", False)
        if not isinstance(allow_list, bool):
            raise _fail(trust, "allow_list", "true or false")
        try:
            policy = DeidPolicy(
                trust_code=trust.code,
                nhs_number_attribute=trust.nhs_number_attribute,
                options=self.options_for(trust),
                max_date_shift_days=self.max_date_shift_days,
                mask_rules=rules,
                ocr=ocr,
                ocr_scope=scope,
                ocr_match=match,
                ocr_max_frames=frames,
                unknown_names=names,
                allow_list=allow_list,
                # the limits the trust's receiver accepted it under: read all it took
                inflate=InflateLimits.of_trust(trust.max_inflated_bytes, trust.max_inflate_ratio),
            )
        except ConfigError as exc:
            raise DeidConfigError(f"{where}: {exc}") from None
        if runnable:
            require_runnable(policy, f"{where}: field 'deidentification.ocr'")
        return policy

    def local(self, *, runnable: bool = True) -> DeidPolicy:
        """The policy without a trust file (``smartbox deidentify`` without ``--trust``): the
        deployment's default options and date-shift bound."""
        policy = DeidPolicy(
            trust_code="LOCAL",
            options=self.default_options,
            max_date_shift_days=self.max_date_shift_days,
        )
        if runnable:
            require_runnable(policy, "policy")
        return policy

    @staticmethod
    def _table(trust: TrustConfig) -> Mapping[str, Any]:
        table = trust.deidentification
        unknown = sorted(set(table) - set(TABLE_KEYS))
        if unknown:
            hint = ""
            if unknown[0] == "max_date_shift_days":
                hint = f" (region-wide: set {MAX_SHIFT_ENV} in the environment)"
            raise _fail(trust, unknown[0], f"unknown field (typo?){hint}")
        return table


def require_runnable(policy: DeidPolicy, where: str) -> None:
    """DeidConfigError if the policy cannot run here: OCR on and ``tesseract`` not on PATH."""
    if policy.ocr and tesseract_path() is None:
        raise DeidConfigError(
            f"{where}: OCR is on but tesseract is not installed on this machine "
            "(apt-get install tesseract-ocr, or set ocr = false)"
        )


def _fail(trust: TrustConfig, key: str, why: str) -> DeidConfigError:
    return DeidConfigError(f"{trust.source_file}: field 'deidentification.{key}': {why}")
