"""Per-trust access control at association time (reject reasons counted), presentation contexts
refused for what we do not store, and DICOM TLS with client certificates."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.receiver_env import CALLER, local_receiver, send_files, storescu
from helpers.receiver_tls import make_pki
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.presentation import build_context

from smartbox.trusts import TlsConfig

CT = Path(get_testdata_file("CT_small.dcm"))


def test_callers_are_checked_and_rejections_counted_by_reason(tmp_path: Path) -> None:
    with (
        local_receiver(tmp_path, allowed_networks=("10.0.0.0/8",)) as outside,
        local_receiver(tmp_path / "b", allowed_networks=("127.0.0.0/8", "10.0.0.0/8")) as r,
    ):
        # an address outside allowed_networks: permanent, service user, no reason given
        res = send_files(outside.host, outside.port, outside.trust.ae_title, [CT])
        assert (res.established, res.reject) == (False, (1, 1, 1))
        assert outside.metric("smartbox_associations_total", result="rejected_source_address") == 1

        res = send_files(r.host, r.port, r.trust.ae_title, [CT], calling="STRANGER")
        assert (res.established, res.reject) == (False, (1, 1, 3))
        res = send_files(r.host, r.port, "NOT_US", [CT])
        assert (res.established, res.reject) == (False, (1, 1, 7))
        res = send_files(r.host, r.port, r.trust.ae_title, [CT])
        assert res.established and res.statuses == [0]
        assert r.metric("smartbox_associations_total", result="rejected_calling_ae") == 1
        assert r.metric("smartbox_associations_total", result="rejected_called_ae") == 1
        assert r.metric("smartbox_associations_total", result="accepted") == 1
        assert r.metric("smartbox_instances_received_total") == 1


def test_dcmtk_sees_the_rejection(tmp_path: Path, dcmtk: dict[str, str]) -> None:
    with local_receiver(tmp_path) as r:
        result = storescu(r.host, r.port, r.trust.ae_title, [CT], calling="STRANGER")
        assert result.returncode != 0
        assert "Calling AE Title Not Recognized" in result.stderr + result.stdout
        assert r.metric("smartbox_associations_total", result="rejected_calling_ae") == 1


def test_contexts_for_what_we_do_not_store_are_rejected(tmp_path: Path) -> None:
    with local_receiver(tmp_path) as r:
        ae = AE(ae_title=CALLER)
        ae.requested_contexts = [
            build_context("1.2.826.0.1.3680043.9.9999.77", [ExplicitVRLittleEndian]),
            build_context(CTImageStorage, ["1.2.826.0.1.3680043.9.9999.78"]),
            build_context(CTImageStorage, [ExplicitVRLittleEndian]),
        ]
        assoc = ae.associate(r.host, r.port, ae_title=r.trust.ae_title)
        try:
            assert assoc.is_established
            results = {cx.context_id: cx.result for cx in assoc.rejected_contexts}
            assert sorted(results.values()) == [0x03, 0x04]  # abstract / transfer syntax
            assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [CTImageStorage]
        finally:
            assoc.release()
            ae.shutdown()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_with_client_certificates(tmp_path: Path, pki, dcmtk: dict[str, str]) -> None:
    tls = TlsConfig(pki.server_cert, pki.server_key, pki.ca_cert, verify_client=True)
    with local_receiver(tmp_path, tls=tls) as r:
        ok = send_files(r.host, r.port, r.trust.ae_title, [CT], tls=pki.client_context())
        assert ok.established and ok.statuses == [0]
        anonymous = send_files(
            r.host, r.port, r.trust.ae_title, [CT], tls=pki.client_context(with_cert=False)
        )
        plain = send_files(r.host, r.port, r.trust.ae_title, [CT])
        assert not anonymous.established and not plain.established
        assert r.metric("smartbox_associations_total", result="rejected_tls") == 2

        mr = Path(get_testdata_file("MR_small.dcm"))
        key_cert = [str(pki.client_key), str(pki.client_cert)]
        result = storescu(
            r.host, r.port, r.trust.ae_title, [mr], "+tls", *key_cert, "+cf", str(pki.ca_cert)
        )
        assert result.returncode == 0, result.stderr
        assert r.metric("smartbox_instances_received_total") == 2
        assert r.metric("smartbox_associations_total", result="accepted") == 2


def test_the_probe_sends_over_dicom_tls_as_a_pacs_would(tmp_path: Path, pki) -> None:
    """``smartbox probe`` against a receiver that requires TLS and verifies its callers: with
    the probe's client certificate every instance is stored; without one, one clear line."""
    from smartbox.app.demo import send_study
    from smartbox.app.probe import tls_context
    from smartbox.errors import ConfigError
    from smartbox.synthetic import make_probe_study

    tls = TlsConfig(pki.server_cert, pki.server_key, pki.ca_cert, verify_client=True)
    with local_receiver(tmp_path, tls=tls) as r:
        env = {
            "SMARTBOX_PROBE_TLS_CERT_FILE": str(pki.client_cert),
            "SMARTBOX_PROBE_TLS_KEY_FILE": str(pki.client_key),
        }
        study = make_probe_study(7)
        statuses = send_study(
            r.host, r.port, r.trust.ae_title, study.datasets, CALLER, tls=tls_context(r.trust, env)
        )
        assert statuses == [0] * len(study.datasets)
        n = len(study.datasets)  # counted as probe instances, not as the trust's
        assert r.metric("smartbox_probe_instances_received_total") == n
        with pytest.raises(ConfigError, match="SMARTBOX_PROBE_TLS_CERT_FILE") as err:
            tls_context(r.trust, {})
        assert "\n" not in str(err.value)
        # the CA is the trust file's: a receiver certificate it did not sign is refused
        other = make_pki(tmp_path / "other")
        ctx = tls_context(r.trust, {**env, "SMARTBOX_PROBE_TLS_CA_FILE": str(other.ca_cert)})
        assert send_study(
            r.host, r.port, r.trust.ae_title, study.datasets[:1], CALLER, tls=ctx
        ) == [-1]


def test_an_archive_that_rejects_the_retrieval_is_reported_as_rejected(tmp_path: Path) -> None:
    """The cohort SCU tells a rejection (the trust file or the archive is wrong: not retried)
    from an archive that is not there, however fast the RJ comes back."""
    from producers.retrieve.config import Archive
    from producers.retrieve.limits import Associations
    from producers.retrieve.scu import ArchiveClient, RetrieveError

    with local_receiver(tmp_path) as r:
        archive = Archive("pacs", r.trust.ae_title, r.host, r.port, network_timeout_seconds=10)
        client = ArchiveClient(archive, "STRANGER", Associations(1), connect_retry_seconds=0)
        for _ in range(20):
            with pytest.raises(RetrieveError) as failed, client.association():
                pass
            assert failed.value.reason == "association_rejected"
        assert r.metric("smartbox_associations_total", result="rejected_calling_ae") == 20
