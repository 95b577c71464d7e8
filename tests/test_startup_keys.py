"""The daemon opens our private keys encrypted at rest, and refuses to start on an unsafe or unopenable one.

Both dialects: the cnbank SM2 key and the iso20022 RSA key, each encrypted
PKCS#8 opened with the passphrase file named in the bank file. A wrong
passphrase or a key file group or others may read stops the start with a
message naming the bank file and the key.
"""

from __future__ import annotations

import os
import re

import pytest

from gateway import config as configmod
from gateway.service import StartupError, make_service
from protocols import keyfile
from simulators import harness
from simulators.isobank import install as isoinstall


@pytest.fixture
def site(tmp_path):
    p = harness.Paths(tmp_path / "inst")
    keys = harness.make_keys(p)
    cfg = harness.write_config(p, keys, harness.Ports(1, 2, 3), token="t")
    pki = isoinstall.make_pki(p.keys)
    isoinstall.write_bank_file(p.banks, pki, 4)
    # Our SM2 key, encrypted at rest with a passphrase from a 0600 file.
    os.unlink(p.keys / "gateway_sm2.pem")
    keyfile.write_private_key_file(p.keys / "gateway_sm2.pem", keys.gw_sm2, passphrase=b"sm2-secret")
    pf = p.keys / "sm2.pass"
    pf.write_text("sm2-secret\n")
    os.chmod(pf, 0o600)
    bank = p.banks / f"{harness.BANK_ID}.toml"
    bank.write_text(bank.read_text().replace(
        'bank_public = "../../keys/bank_sm2.pub.pem"\n',
        'bank_public = "../../keys/bank_sm2.pub.pem"\npassphrase_file = "../../keys/sm2.pass"\n'))
    harness.migrate(cfg)
    return p, cfg, pki


def test_encrypted_keys_of_both_dialects_open_at_start(site):
    """With the right passphrases both banks' adapters are made: the encrypted SM2 key and the
    encrypted RSA key are opened (the service is built, not started)."""
    p, cfg, _ = site
    gw = make_service(configmod.load(cfg))
    assert set(gw.flows) == {harness.BANK_ID, isoinstall.ISO_BANK_ID}
    assert gw.flows[harness.BANK_ID].adapter.link.our_key.public_key == \
        keyfile.read_public_key_file(p.keys / "gateway_sm2.pub.pem")


def test_a_wrong_passphrase_stops_the_start_naming_the_key(site):
    """A passphrase that does not open the SM2 key: StartupError naming the bank file and keys.our_private."""
    p, cfg, _ = site
    (p.keys / "sm2.pass").write_text("not-it\n")
    with pytest.raises(StartupError) as e:
        make_service(configmod.load(cfg))
    assert f"{harness.BANK_ID}.toml: keys.our_private" in str(e.value)
    assert "passphrase" in str(e.value)


def test_a_key_readable_by_others_stops_the_start(site):
    """Our RSA key made readable by group and others: refused with its mode, naming keys.our_rsa_key."""
    p, cfg, pki = site
    os.chmod(pki.dir / "gateway_rsa.pem", 0o644)
    with pytest.raises(StartupError) as e:
        make_service(configmod.load(cfg))
    assert f"{isoinstall.ISO_BANK_ID}.toml: keys.our_rsa_key" in str(e.value)
    assert "644" in str(e.value)


def test_an_unset_passphrase_variable_stops_the_start_naming_it(site, monkeypatch):
    """A bank file naming an environment variable that is not set: StartupError naming keys.passphrase_env."""
    p, cfg, _ = site
    bank = p.banks / f"{harness.BANK_ID}.toml"
    bank.write_text(bank.read_text().replace('passphrase_file = "../../keys/sm2.pass"',
                                             'passphrase_env = "GW_TEST_SM2_PASS"'))
    monkeypatch.delenv("GW_TEST_SM2_PASS", raising=False)
    with pytest.raises(StartupError) as e:
        make_service(configmod.load(cfg))
    assert f"{harness.BANK_ID}.toml: keys.passphrase_env" in str(e.value) and "GW_TEST_SM2_PASS" in str(e.value)
    monkeypatch.setenv("GW_TEST_SM2_PASS", "sm2-secret")
    assert harness.BANK_ID in make_service(configmod.load(cfg)).flows


def _plain_sm2(p, keys):
    """Our SM2 key written back unencrypted, and the bank file's passphrase line removed."""
    os.unlink(p.keys / "gateway_sm2.pem")
    keyfile.write_private_key_file(p.keys / "gateway_sm2.pem", keys.gw_sm2)
    bank = p.banks / f"{harness.BANK_ID}.toml"
    bank.write_text(bank.read_text().replace('passphrase_file = "../../keys/sm2.pass"\n', ""))
    return bank


def test_an_unencrypted_key_stops_the_start_unless_the_bank_file_allows_it(site, tmp_path):
    """Our SM2 key stored in clear: without [keys] allow_unencrypted = true the start stops naming the bank
    file, keys.our_private and what to do; with it the daemon starts and warns in the log."""
    from twisted.logger import formatEvent, globalLogPublisher
    p, cfg, _ = site
    keys = harness.Keys(gw_sm2=keyfile.read_private_key_file(p.keys / "gateway_sm2.pem",
                                                            passphrase=b"sm2-secret"),
                        bank_sm2=None, gw_ssh="", bank_host="")
    bank = _plain_sm2(p, keys)
    bank.write_text(bank.read_text().replace("allow_unencrypted = true", "allow_unencrypted = false"))
    with pytest.raises(StartupError) as e:
        make_service(configmod.load(cfg))
    assert f"{harness.BANK_ID}.toml: keys.our_private" in str(e.value) and "not encrypted" in str(e.value)
    assert "allow_unencrypted" in str(e.value)
    bank.write_text(bank.read_text().replace("allow_unencrypted = false", "allow_unencrypted = true"))
    seen: list[str] = []
    observer = lambda event: seen.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        assert harness.BANK_ID in make_service(configmod.load(cfg)).flows
    finally:
        globalLogPublisher.removeObserver(observer)
    assert any("keys.our_private" in s and "NOT encrypted" in s for s in seen), seen


def test_an_unencrypted_rsa_key_is_refused_naming_our_rsa_key(site):
    """The iso20022 bank's RSA key rewritten in clear (mode 0600) is refused the same way."""
    from cryptography.hazmat.primitives import serialization
    from gateway import keystore
    p, cfg, pki = site
    path = pki.dir / "gateway_rsa.pem"
    bank = p.banks / f"{isoinstall.ISO_BANK_ID}.toml"
    kind, where = re.search(r'passphrase_(file|env) = "([^"]+)"', bank.read_text()).groups()
    passphrase = (keystore.Passphrase.from_file(bank.parent / where) if kind == "file"
                  else keystore.Passphrase.from_env(where))
    key = keystore.load_private_key(path, passphrase)
    os.unlink(path)
    keyfile.write_new_file(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()), 0o600)
    with pytest.raises(StartupError) as e:
        make_service(configmod.load(cfg))
    assert f"{isoinstall.ISO_BANK_ID}.toml: keys.our_rsa_key" in str(e.value) and "not encrypted" in str(e.value)
