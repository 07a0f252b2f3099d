"""The primitives layer: PRG, AEAD, key agreement, signatures, HKDF."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from sealagg.crypto._primitives.aead import open_sealed, seal
from sealagg.crypto._primitives.agreement import AgreementKey
from sealagg.crypto._primitives.kdf import derive_key
from sealagg.crypto._primitives.prg import CHUNK_WORDS, apply_masks, expand_mask, uniform_uint16
from sealagg.crypto._primitives.signing import IdentityKey, verify_signature
from sealagg.crypto.errors import BadSignatureError, DecryptionError, MalformedMessageError


def test_prg_is_deterministic_and_key_dependent():
    k1, k2 = os.urandom(32), os.urandom(32)
    np.testing.assert_array_equal(expand_mask(k1, 1000), expand_mask(k1, 1000))
    assert np.count_nonzero(expand_mask(k1, 1000) == expand_mask(k2, 1000)) < 3


@pytest.mark.parametrize("offset", [0, 1, 3, 4, 5, 1023, CHUNK_WORDS - 1, CHUNK_WORDS + 7])
def test_prg_is_seekable(offset):
    key = os.urandom(32)
    full = expand_mask(key, CHUNK_WORDS * 2 + 50)
    part = expand_mask(key, 77, offset=offset)
    np.testing.assert_array_equal(part, full[offset : offset + 77])


def test_prg_matches_aes_ctr_keystream_vector():
    # AES-256-CTR of zeros with key 00..1f and counter 0: first block, as little-endian words.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = bytes(range(32))
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    block = enc.update(bytes(64))
    np.testing.assert_array_equal(expand_mask(key, 16), np.frombuffer(block, dtype="<u4"))


def test_masks_cancel_and_wrap():
    key = os.urandom(32)
    x = np.arange(5000, dtype=np.uint32) * np.uint32(2654435761)
    y = x.copy()
    apply_masks(y, [(key, 1)])
    assert not np.array_equal(x, y)
    apply_masks(y, [(key, -1)])
    np.testing.assert_array_equal(x, y)


def test_prg_output_looks_uniform():
    words = expand_mask(os.urandom(32), 1 << 16)
    counts = np.bincount(words >> 28, minlength=16)
    expected = len(words) / 16
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 50  # 15 dof: p < 1e-5 for a fair stream
    noise = uniform_uint16(os.urandom(32), 1001)
    assert noise.dtype == np.uint16 and noise.shape == (1001,)


def test_prg_rejects_bad_arguments():
    with pytest.raises(ValueError):
        expand_mask(b"short", 10)
    with pytest.raises(TypeError):
        apply_masks(np.zeros(4, dtype=np.int64), [(os.urandom(32), 1)])
    with pytest.raises(ValueError):
        apply_masks(np.zeros(4, dtype=np.uint32), [(os.urandom(32), 2)])


def test_aead_binds_associated_data():
    key = os.urandom(32)
    sealed = seal(key, b"share", b"round|phase|1|2")
    assert open_sealed(key, sealed, b"round|phase|1|2") == b"share"
    with pytest.raises(DecryptionError):
        open_sealed(key, sealed, b"round|phase|2|1")
    tampered = bytearray(sealed)
    tampered[15] ^= 1
    with pytest.raises(DecryptionError):
        open_sealed(key, bytes(tampered), b"round|phase|1|2")
    with pytest.raises(DecryptionError):
        open_sealed(key, b"short", b"x")
    assert seal(key, b"share", b"a") != seal(key, b"share", b"a")  # fresh nonces


def test_key_agreement_is_symmetric_and_refuses_bad_keys():
    a, b = AgreementKey.generate(), AgreementKey.generate()
    assert a.exchange(b.public_bytes) == b.exchange(a.public_bytes)
    with pytest.raises(MalformedMessageError):
        a.exchange(bytes(31))
    with pytest.raises(MalformedMessageError):
        a.exchange(bytes(32))  # low-order point: all-zero shared secret
    rebuilt = AgreementKey.from_private_bytes(a.export_private_bytes_for_sharing())
    assert rebuilt.public_bytes == a.public_bytes


def test_secret_keys_refuse_pickling_and_hide_in_repr():
    key, ident = AgreementKey.generate(), IdentityKey.generate()
    for obj in (key, ident):
        with pytest.raises(TypeError):
            pickle.dumps(obj)
    assert key.export_private_bytes_for_sharing().hex() not in repr(key)


def test_signatures_verify_or_raise():
    ident = IdentityKey.generate()
    sig = ident.sign(b"survivors")
    verify_signature(ident.verify_key_bytes, b"survivors", sig, signer="c1")
    with pytest.raises(BadSignatureError, match="c1"):
        verify_signature(ident.verify_key_bytes, b"survivorz", sig, signer="c1")
    with pytest.raises(BadSignatureError):
        verify_signature(IdentityKey.generate().verify_key_bytes, b"survivors", sig, signer="c1")
    with pytest.raises(MalformedMessageError):
        verify_signature(ident.verify_key_bytes, b"survivors", sig[:10], signer="c1")


def test_hkdf_needs_a_label_and_separates_purposes():
    secret = os.urandom(32)
    with pytest.raises(ValueError):
        derive_key(secret, salt=b"r", info=b"")
    assert derive_key(secret, salt=b"r", info=b"a") != derive_key(secret, salt=b"r", info=b"b")
    assert derive_key(secret, salt=b"r1", info=b"a") != derive_key(secret, salt=b"r2", info=b"a")
