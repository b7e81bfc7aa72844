from pathlib import Path

import pytest

from smartbox.errors import ConfigError
from smartbox.keys import RegionalKey
from smartbox.settings import Settings, read_env_file
from smartbox.trusts import load_all_trusts, load_trust

GOOD = """
code = "RTK"
name = "Ashford and St Peter's Hospitals"
ae_title = "SMARTBOX_RTK"
port = 11112
allowed_callers = ["RTK_PACS"]
nhs_number_attribute = "PatientID"
quiet_seconds = 30
"""


def write(tmp_path: Path, code: str, text: str) -> Path:
    p = tmp_path / f"{code}.toml"
    p.write_text(text)
    return p


def test_valid_trust_loads(tmp_path: Path) -> None:
    write(tmp_path, "RTK", GOOD)
    t = load_trust(tmp_path, "RTK")
    assert (t.code, t.port, t.allowed_callers, t.quiet_seconds) == (
        "RTK",
        11112,
        ("RTK_PACS",),
        30.0,
    )
    assert t.deidentification == {}  # its table is consumers.deid.policy's to read


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ('port = "eleven"', "port"),
        ('ae_title = "A\\\\B"', "ae_title"),
        ('ae_title = "THIS_TITLE_IS_FAR_TOO_LONG"', "ae_title"),
        ("allowed_callers = []", "allowed_callers"),
        ('nhs_number_attribute = "NotAKeyword"', "nhs_number_attribute"),
        ("quiet_seconds = -1", "quiet_seconds"),
        ("prot = 1", "prot"),
        ('allowed_networks = ["10.0.0.300/8"]', "allowed_networks"),
        ('deidentification = "retain everything"', "deidentification"),
    ],
)
def test_bad_field_is_named(tmp_path: Path, change: str, field: str) -> None:
    key = change.split(" =")[0]
    lines = [ln for ln in GOOD.splitlines() if not ln.startswith(key + " ")]
    path = write(tmp_path, "RTK", "\n".join(lines) + "\n" + change + "\n")
    with pytest.raises(ConfigError) as err:
        load_trust(tmp_path, "RTK")
    assert str(path) in str(err.value)
    assert f"'{field}'" in str(err.value)


def test_unknown_trust_lists_known(tmp_path: Path) -> None:
    write(tmp_path, "RTK", GOOD)
    with pytest.raises(ConfigError, match=r"unknown trust NOPE.*known: RTK"):
        load_trust(tmp_path, "NOPE")


def test_code_must_match_file_name(tmp_path: Path) -> None:
    write(tmp_path, "RGT", GOOD)
    with pytest.raises(ConfigError, match="'code'"):
        load_trust(tmp_path, "RGT")


def test_duplicate_ports_rejected(tmp_path: Path) -> None:
    write(tmp_path, "RTK", GOOD)
    write(tmp_path, "RGT", GOOD.replace('"RTK"', '"RGT"'))
    with pytest.raises(ConfigError, match="already used"):
        load_all_trusts(tmp_path)


def test_invalid_toml(tmp_path: Path) -> None:
    write(tmp_path, "RTK", "code = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_trust(tmp_path, "RTK")


def test_caller_and_network_checks(tmp_path: Path) -> None:
    write(tmp_path, "RTK", GOOD + 'allowed_networks = ["10.1.0.0/16"]\n')
    t = load_trust(tmp_path, "RTK")
    assert t.caller_allowed("RTK_PACS", "10.1.2.3") == (True, "ok")
    assert t.caller_allowed("OTHER", "10.1.2.3") == (False, "calling_ae")
    assert t.caller_allowed("RTK_PACS", "10.2.0.1") == (False, "source_address")
    # the source address is checked first (docs/receiver.md): outside, the AE title is moot
    assert t.caller_allowed("OTHER", "10.2.0.1") == (False, "source_address")


def test_settings_secrets_file_and_repr(tmp_path: Path) -> None:
    secrets = tmp_path / "smartbox.env"
    secrets.write_text('# comment\nSMARTBOX_S3_SECRET_KEY="s3cr3t-value"\nSMARTBOX_PREFETCH=8\n')
    s = Settings.from_env({"SMARTBOX_SECRETS_FILE": str(secrets)})
    assert s.s3.secret_key == "s3cr3t-value"
    assert s.prefetch == 8
    assert "s3cr3t-value" not in repr(s)
    assert read_env_file(secrets)["SMARTBOX_PREFETCH"] == "8"


def test_settings_bad_values() -> None:
    with pytest.raises(ConfigError, match="SMARTBOX_PREFETCH"):
        Settings.from_env({"SMARTBOX_PREFETCH": "lots"})
    with pytest.raises(ConfigError, match="SMARTBOX_S3_SECURE"):
        Settings.from_env({"SMARTBOX_S3_SECURE": "maybe"})


def test_key_required_and_hidden(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no pseudonymisation key"):
        RegionalKey.from_env({})
    with pytest.raises(ConfigError, match="too short"):
        RegionalKey.from_env({"SMARTBOX_PSEUDONYM_KEY": "short"})
    f = tmp_path / "key"
    f.write_text("0123456789abcdef0123456789abcdef\n")
    k = RegionalKey.from_env({"SMARTBOX_PSEUDONYM_KEY_FILE": str(f)})
    assert k.secret == b"0123456789abcdef0123456789abcdef"
    assert "0123456789abcdef" not in repr(k)
    assert k.opaque_id("x", "1") == RegionalKey(k.secret).opaque_id("x", "1")
    assert k.opaque_id("x", "1") != k.opaque_id("y", "1")


def test_registry_reloads_a_changed_or_new_trust_file(tmp_path: Path) -> None:
    import os

    from smartbox.trusts import TrustRegistry

    write(tmp_path, "RTK", GOOD)
    registry = TrustRegistry(tmp_path)
    assert registry.get("RTK") is registry.get("RTK")  # cached while unchanged
    with pytest.raises(ConfigError, match="no trust file for RGT"):
        registry.get("RGT")
    explicit = GOOD.replace('"RTK"', '"RGT"').replace("11112", "11113")
    path = write(
        tmp_path, "RGT", explicit + '\n[deidentification]\noptions = ["clean_descriptors"]\n'
    )
    assert registry.get("RGT").deidentification == {"options": ["clean_descriptors"]}
    path.write_text(explicit.replace("quiet_seconds = 30", "quiet_seconds = 90"))
    os.utime(path, (1, 1))
    assert registry.get("RGT").quiet_seconds == 90  # a changed file is re-read


def test_several_broker_urls_are_a_cluster_each_checked() -> None:
    """``SMARTBOX_AMQP_URL`` may list the nodes of a cluster, comma-separated; pika gets one
    parameter set per node, in order; a bad one is named by position, never echoed."""
    from smartbox.rabbit import connection_parameters

    urls = "amqp://u:pw1@node1:5672/%2F, amqp://u:pw1@node2:5673/%2F,amqp://u:pw1@node3:5674/%2F"
    s = Settings.from_env({"SMARTBOX_AMQP_URL": urls})
    params = connection_parameters(s.amqp_url, client="smartbox test")
    assert [(p.host, p.port) for p in params] == [("node1", 5672), ("node2", 5673), ("node3", 5674)]
    assert all(p.connection_attempts == 1 for p in params)
    assert all(
        p.client_properties["connection_name"].startswith("smartbox test pid=") for p in params
    )
    one = Settings.from_env({"SMARTBOX_AMQP_URL": "amqp://u:pw1@node1:5672/%2F"})
    assert [p.host for p in connection_parameters(one.amqp_url)] == ["node1"]

    for bad, where in (
        ("amqp://u:pw1@node1:5672/%2F,amqp://u:pw1@node2:56x2/%2F", "URL 2 of 2"),
        ("amqp://u:pw1@node1:5672/%2F,http://u:pw1@node2/", "URL 2 of 2"),
        (" , ", "empty"),
    ):
        with pytest.raises(ConfigError) as info:
            Settings.from_env({"SMARTBOX_AMQP_URL": bad})
        message = str(info.value)
        assert "SMARTBOX_AMQP_URL" in message and where in message, message
        assert "\n" not in message and "pw1" not in message
