"""The core link's settings and hostile-core behaviour that is not the client's alone (issue 8).

Config: plain http to a host other than loopback is refused unless said so explicitly.
"""

from __future__ import annotations

import pytest

from gateway import config as configmod
from tests.test_config import _edit, _has, inst  # noqa: F401  (the installation fixture)


@pytest.mark.parametrize("url", ["http://core.example.cn:8080/", "http://10.1.2.3/api"])
def test_plain_http_to_another_host_is_refused_naming_file_and_key(inst, url) -> None:  # noqa: F811
    """The token and every ID number of an order would cross the network in clear: refused at load,
    with the file and core.base_url named and the setting that would accept it."""
    _edit(inst.gateway, 'base_url = "http://127.0.0.1:8081/"', f'base_url = "{url}"')
    errors = inst.errors()
    assert _has(errors, inst.gateway, "core.base_url", "plain http", "allow_plain_http")


def test_plain_http_accepted_when_configuration_says_so(inst) -> None:  # noqa: F811
    """core.allow_plain_http = true accepts it; https and loopback http need no such setting."""
    _edit(inst.gateway, 'base_url = "http://127.0.0.1:8081/"',
          'base_url = "http://core.example.cn/"\nallow_plain_http = true')
    assert configmod.load(inst.gateway).core.allow_plain_http is True
    _edit(inst.gateway, 'base_url = "http://core.example.cn/"\nallow_plain_http = true',
          'base_url = "https://core.example.cn/"')
    assert configmod.load(inst.gateway).core.base_url == "https://core.example.cn"
    _edit(inst.gateway, 'base_url = "https://core.example.cn/"', 'base_url = "http://localhost:81/"')
    assert configmod.load(inst.gateway).core.call_deadline_s == 60.0
