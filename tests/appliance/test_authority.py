"""The federation authority (appliance/authority.py) and enrolment (client_shim/enrol.py).

The client makes its own keys; the authority (off the appliance) approves and signs the
roster; the appliance's CA certifies the client's CSR only for an approved entry; the
authority countersigns the issued kit (its CA, server name and policies); the kit the client
installs holds no private key of the appliance's making, and a kit the appliance re-signed
is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from sealagg.appliance import authority as auth
from sealagg.appliance import kit_issue
from sealagg.appliance.errors import KitTamperedError, ProvisioningError
from sealagg.appliance.federation import (
    FederationFolder,
    add_client,
    add_enrolled_client,
    init_federation,
    install_roster,
    pin_authority,
)
from sealagg.appliance.kit import (
    AUTHORITY_ROSTER,
    AUTHORITY_ROSTER_SIGNATURE_CONTEXT,
    AUTHORITY_SIGNATURE,
    AUTHORITY_SIGNATURE_CONTEXT,
    load_kit,
)
from sealagg.client_shim import enrol
from sealagg.crypto import IdentityKey
from sealagg.crypto.roster import (
    IdentityKeySigner,
    Role,
    make_enrolment_request,
    sign_roster,
    verify_roster,
)

PASSPHRASE = b"correct horse battery staple"


@pytest.fixture
def setup(tmp_path: Path):
    federation = init_federation(tmp_path / "fed", name="fed", hosts=["localhost"])
    signer = auth.init_authority(tmp_path / "authority", PASSPHRASE, federation="fed")
    pin_authority(federation, signer.public_key())
    return tmp_path, federation, signer


def _enrol(root: Path, federation: FederationFolder, signer, name: str = "alice") -> Path:
    """An enrolled client's folder: approved, issued, countersigned and installed."""
    folder, issued = _issue(root, federation, signer, name)
    auth.sign_kit(root / "authority", signer, issued)
    enrol.install(issued, folder)
    return folder


def test_enrolment_end_to_end_keeps_private_keys_on_the_client(setup):
    root, federation, signer = setup
    folder = _enrol(root, federation, signer)
    kit = load_kit(folder, trusted_signer=federation.signer_public_key)
    assert kit.enrolled and kit.authority_public_key == signer.public_key()
    for file in ("identity.key", "client.key"):
        assert stat.S_IMODE(os.stat(folder / file).st_mode) == 0o600
    record = federation.client_record("alice")
    assert record is not None and record.identity_public_key == kit.identity_public_key
    roster = federation.roster()
    assert roster is not None and roster.version == 2
    assert roster.entry("alice").role is Role.DATA_OWNER
    # The client's private keys appear nowhere in the federation folder (nor the issued kit).
    secrets = [kit.identity_seed, kit.identity_seed.hex().encode(), kit.client_key_pem]
    for path in [*federation.folder.rglob("*"), *(root / "issued-alice").rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert not any(s in data for s in secrets), path
    assert not any((root / "issued-alice").glob("*.key"))


def test_the_appliance_certifies_only_what_the_authority_approved(setup):
    root, federation, signer = setup
    request = enrol.request(
        name="mallory",
        federation="fed",
        authority_key=signer.public_key(),
        folder=root / "mallory",
        request_out=root / "mallory.json",
    )
    with pytest.raises(ProvisioningError, match="no signed roster is installed"):
        add_enrolled_client(federation, request.read_bytes())
    install_roster(federation, (root / "authority" / auth.ROSTER_FILE).read_bytes())
    with pytest.raises(ProvisioningError, match="not on the installed roster"):
        add_enrolled_client(federation, request.read_bytes())
    # Approved, but the appliance is handed another identity key under the same name.
    _, signed = auth.approve(root / "authority", signer, request.read_bytes())
    install_roster(federation, signed)
    body = json.loads(json.loads(request.read_bytes())["body"])
    swapped = make_enrolment_request(
        name="mallory",
        federation="fed",
        identity=IdentityKey.generate(),
        tls_csr_pem=body["tls_csr_pem"],
    )
    with pytest.raises(ProvisioningError, match="not the ones roster version 2 admits"):
        add_enrolled_client(federation, swapped)


def test_a_forged_request_is_refused(setup):
    root, _, signer = setup
    request = json.loads(
        enrol.request(
            name="eve",
            federation="fed",
            authority_key=signer.public_key(),
            folder=root / "eve",
            request_out=root / "eve.json",
        ).read_bytes()
    )
    request["body"] = request["body"].replace('"eve"', '"bob"')
    with pytest.raises(ProvisioningError, match="refused"):
        auth.approve(root / "authority", signer, json.dumps(request).encode())


def test_install_refuses_a_kit_pinning_another_authority(setup, tmp_path):
    root, _, signer = setup
    other = tmp_path / "other-fed"
    fed2 = init_federation(other, name="fed", hosts=["localhost"])
    impostor = IdentityKeySigner(IdentityKey.generate())
    pin_authority(fed2, impostor.public_key())
    folder = root / "client-bob"
    request = enrol.request(
        name="bob",
        federation="fed",
        authority_key=signer.public_key(),
        folder=folder,
        request_out=root / "bob.json",
    )
    roster = auth.current_roster(root / "authority", signer)
    _, _ = auth.approve(root / "authority", signer, request.read_bytes())
    # A malicious appliance signs its own roster with the client on it and issues a kit
    # pinning its own authority key: the client refuses to install it.
    fake = roster.with_entry(
        auth.current_roster(root / "authority", signer).entry("bob"), issued_at=roster.issued_at
    )
    install_roster(fed2, sign_roster(fake, impostor))
    issued = add_enrolled_client(fed2, request.read_bytes(), out=root / "issued-bob")
    with pytest.raises(ProvisioningError, match="another authority key"):
        enrol.install(issued, folder)


def test_the_authority_key_is_passphrase_protected(setup):
    root, _, signer = setup
    folder = root / "authority"
    document = json.loads((folder / auth.KEY_FILE).read_text())
    assert document["kdf"] == "scrypt" and "ENCRYPTED PRIVATE KEY" in document["pkcs8_pem"]
    assert stat.S_IMODE(os.stat(folder / auth.KEY_FILE).st_mode) == 0o600
    assert auth.FileSigner.load(folder, PASSPHRASE).public_key() == signer.public_key()
    with pytest.raises(ProvisioningError, match="wrong passphrase"):
        auth.FileSigner.load(folder, b"not the passphrase")
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(signer)


def test_the_authority_never_lives_in_the_federation_folder(setup):
    root, federation, _ = setup
    with pytest.raises(ProvisioningError, match="off the appliance"):
        auth.init_authority(federation.folder / "authority", PASSPHRASE, federation="fed")
    with pytest.raises(ProvisioningError, match="at least"):
        auth.init_authority(root / "weak", b"short", federation="fed")


def test_install_roster_refuses_older_versions_and_other_keys(setup):
    root, federation, signer = setup
    v1 = (root / "authority" / auth.ROSTER_FILE).read_bytes()
    _enrol(root, federation, signer)
    with pytest.raises(ProvisioningError, match="older than the installed"):
        install_roster(federation, v1)
    impostor = IdentityKeySigner(IdentityKey.generate())
    forged = sign_roster(auth.current_roster(root / "authority", signer), impostor)
    with pytest.raises(ProvisioningError, match="not signed by"):
        install_roster(federation, forged)


def _issue(root: Path, federation: FederationFolder, signer, name: str) -> tuple[Path, Path]:
    """An approved client's folder (its own keys) and the kit the appliance issued for it."""
    folder = root / f"client-{name}"
    request = enrol.request(
        name=name,
        federation="fed",
        authority_key=signer.public_key(),
        folder=folder,
        request_out=root / f"{name}.request.json",
    )
    _, signed = auth.approve(root / "authority", signer, request.read_bytes())
    install_roster(federation, signed)
    issued = add_enrolled_client(federation, request.read_bytes(), out=root / f"issued-{name}")
    return folder, issued


def _re_sign(federation: FederationFolder, issued: Path, authority_key, **changes) -> None:
    """What a malicious appliance does to a kit: change a file (e.g. the server name it will
    answer as), re-sign the manifest with its provisioning key and countersign it with
    ``authority_key`` (its own, or None to keep the authority's old countersignature)."""
    pem = (issued / "ca.pem").read_bytes()
    files = kit_issue.build_kit(
        name=changes.get("name", "alice"),
        federation="fed",
        address=changes.get("address", federation.public_address),
        server_name=changes.get("server_name", federation.tls_server_name),
        ca_cert_pem=pem,
        client_cert_pem=(issued / "client.pem").read_bytes(),
        client_key_pem=None,
        identity_seed=None,
        signer=federation.audit_signing_key,
        issued_at=federation.ca_certificate.not_valid_before_utc,
        attestation_policy=changes.get("attestation_policy"),
        authority_public_key=federation.authority_public_key,
    )
    old = (issued / AUTHORITY_SIGNATURE).read_bytes()
    for file in issued.iterdir():
        file.unlink()
    for file, data in files.items():
        (issued / file).write_bytes(data)
    if authority_key is None:
        (issued / AUTHORITY_SIGNATURE).write_bytes(old)
    else:
        signature = authority_key.sign(AUTHORITY_SIGNATURE_CONTEXT + files["MANIFEST.json"])
        (issued / AUTHORITY_SIGNATURE).write_bytes(signature.hex().encode() + b"\n")


def test_an_enrolled_kit_needs_the_authority_countersignature(setup):
    root, federation, signer = setup
    folder, issued = _issue(root, federation, signer, "alice")
    with pytest.raises(KitTamperedError, match=r"no AUTHORITY\.sig"):
        enrol.install(issued, folder)
    vouched = auth.sign_kit(root / "authority", signer, issued)
    assert vouched["client"] == "alice" and vouched["tls_server_name"] == "localhost"
    enrol.install(issued, folder)
    kit = load_kit(folder)
    assert kit.enrolled and kit.authority_signed


@pytest.mark.parametrize("countersigned_by", ["the appliance", "the authority, earlier"])
def test_a_kit_the_appliance_re_signed_is_refused(setup, countersigned_by):
    """The appliance changes the server name in an issued (and countersigned) kit, signs the
    manifest again with its own provisioning key, and countersigns with its own key or keeps
    the authority's old countersignature: the client refuses it at install and at load."""
    root, federation, signer = setup
    folder, issued = _issue(root, federation, signer, "alice")
    auth.sign_kit(root / "authority", signer, issued)
    own = IdentityKey.generate() if countersigned_by == "the appliance" else None
    _re_sign(federation, issued, own, server_name="evil.example")
    with pytest.raises(KitTamperedError, match="not the signature of the federation authority"):
        enrol.install(issued, folder)
    assert not (folder / "MANIFEST.json").exists(), "install changed the client's folder"
    # The same kit already in the client's folder: refused every time the shim opens it.
    for file in issued.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    with pytest.raises(KitTamperedError, match="not the signature of the federation authority"):
        load_kit(folder)


def test_the_authority_vouches_only_for_roster_clients_and_the_recorded_identity(setup, tmp_path):
    root, federation, signer = setup
    _, issued = _issue(root, federation, signer, "alice")
    auth.sign_kit(root / "authority", signer, issued)  # records the CA and server name
    # A second federation (another CA) issues a kit for the same approved request.
    other = init_federation(tmp_path / "fed2", name="fed", hosts=["localhost"])
    pin_authority(other, signer.public_key())
    install_roster(other, (root / "authority" / auth.ROSTER_FILE).read_bytes())
    request = (root / "alice.request.json").read_bytes()
    foreign = add_enrolled_client(other, request, out=root / "foreign-alice")
    with pytest.raises(ProvisioningError, match="refusing to vouch for it"):
        auth.sign_kit(root / "authority", signer, foreign)
    # A kit for a client the roster no longer lists.
    roster = auth.current_roster(root / "authority", signer)
    auth.publish(root / "authority", roster.without("alice", issued_at=roster.issued_at), signer)
    with pytest.raises(ProvisioningError, match="not on the federation roster"):
        auth.sign_kit(root / "authority", signer, issued)


# ------------------------------------------------------------- the roster that travels in the kit


def _authority_roster_files(issued: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in issued.iterdir() if f.name.startswith("AUTHORITY.")}


def test_sign_kit_puts_the_current_roster_in_the_kit(setup):
    """The countersigned kit carries the authority's current signed roster, bound by
    AUTHORITY.sig: the client verifies it under the key it pinned at enrolment."""
    root, federation, signer = setup
    folder = _enrol(root, federation, signer)
    current = (root / "authority" / auth.ROSTER_FILE).read_bytes()
    assert (folder / AUTHORITY_ROSTER).read_bytes() == current
    kit = load_kit(folder, trusted_signer=federation.signer_public_key)
    assert kit.authority_roster == current
    assert verify_roster(current, authority_key=signer.public_key(), federation="fed").version == 2


def _countersign(issued: Path, authority, roster: bytes | None) -> None:
    """Write a countersignature by ``authority`` (any key) over the manifest and ``roster``
    (None: the old form, a kit without a roster)."""
    manifest = (issued / "MANIFEST.json").read_bytes()
    if roster is None:
        (issued / AUTHORITY_ROSTER).unlink(missing_ok=True)
        signed = AUTHORITY_SIGNATURE_CONTEXT + manifest
    else:
        (issued / AUTHORITY_ROSTER).write_bytes(roster)
        signed = AUTHORITY_ROSTER_SIGNATURE_CONTEXT + hashlib.sha256(roster).digest() + manifest
    (issued / AUTHORITY_SIGNATURE).write_bytes(authority.sign(signed).hex().encode() + b"\n")


def test_a_kit_roster_not_the_authoritys_is_refused(setup):
    """The appliance swaps the kit's roster for one it signed itself (listing ghosts) and
    countersigns the kit with its own key: the kit signature check refuses it. Even under a
    countersignature of the pinned key, a roster another key signed is refused."""
    root, federation, signer = setup
    folder, issued = _issue(root, federation, signer, "alice")
    auth.sign_kit(root / "authority", signer, issued)
    impostor = IdentityKeySigner(IdentityKey.generate())
    forged = sign_roster(auth.current_roster(root / "authority", signer), impostor)
    _countersign(issued, impostor, forged)
    with pytest.raises(KitTamperedError, match="not the signature of the federation authority"):
        enrol.install(issued, folder)
    _countersign(issued, signer, forged)  # only the authority could do this; shows the check
    with pytest.raises(KitTamperedError, match="roster in the kit is not the authority's"):
        enrol.install(issued, folder)
    assert not (folder / "MANIFEST.json").exists(), "install changed the client's folder"


@pytest.mark.parametrize("swap", ["older roster", "roster removed", "roster added"])
def test_the_kit_roster_is_bound_by_the_countersignature(setup, swap):
    """AUTHORITY.sig covers the roster: the appliance cannot put an older, validly signed
    roster in its place, drop it (to reopen the first-roster hole), or add one to a kit the
    authority signed without."""
    root, federation, signer = setup
    v1 = (root / "authority" / auth.ROSTER_FILE).read_bytes()
    folder, issued = _issue(root, federation, signer, "alice")
    if swap == "roster added":
        _countersign(issued, signer, None)  # an old-form countersignature
        (issued / AUTHORITY_ROSTER).write_bytes(v1)
    else:
        auth.sign_kit(root / "authority", signer, issued)
        if swap == "older roster":
            (issued / AUTHORITY_ROSTER).write_bytes(v1)
        else:
            (issued / AUTHORITY_ROSTER).unlink()
    with pytest.raises(KitTamperedError, match="not the signature of the federation authority"):
        enrol.install(issued, folder)


def test_a_roster_in_a_kit_without_a_countersignature_is_refused(tmp_path):
    """A development kit (no authority pinned, none countersigned) with a roster file: no key
    vouches for it, so it is refused rather than trusted or ignored."""
    federation = init_federation(tmp_path / "fed", name="fed", hosts=["localhost"])
    issued = add_client(federation, "dev")
    (issued / AUTHORITY_ROSTER).write_bytes(b"{}")
    with pytest.raises(KitTamperedError, match="no countersignature vouches for it"):
        load_kit(issued)


def test_an_older_kit_without_a_roster_still_loads(setup):
    """A kit countersigned before kits carried the roster (old-form AUTHORITY.sig, no roster
    file) loads as before: no roster from the kit, so the client's first roster is still only
    the appliance's word until GetRoster (the documented hole of such kits)."""
    root, federation, signer = setup
    folder, issued = _issue(root, federation, signer, "alice")
    _countersign(issued, signer, None)
    assert set(_authority_roster_files(issued)) == {AUTHORITY_SIGNATURE}
    enrol.install(issued, folder)
    kit = load_kit(folder, trusted_signer=federation.signer_public_key)
    assert kit.enrolled and kit.authority_signed and kit.authority_roster is None
