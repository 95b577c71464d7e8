"""A bank adapter from another package, found through the entry-point group and used by the flows.

The test writes a tiny installed distribution (a package plus its .dist-info
with entry_points.txt) into a folder on sys.path, exactly what `pip install`
of a site's own package leaves behind, and a bank file naming its dialect.
The daemon's service finds the adapter by dialect name, checks it with
verifyObject, and the flow pays an order through it without knowing it.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import pytest_twisted

from gateway import config as configmod
from gateway.bankplugins import AdapterError, factory_for, make_adapter
from gateway.faults import Faults
from simulators import datagen, harness
from tests.support import InProcess

pytestmark = [pytest.mark.loopback]

ACME = '''
"""A site's own bank adapter: everything it is asked to pay is paid (a test bank)."""
import json, os
from zope.interface import implementer, provider
from adapters.interface import (IBankAdapter, IBankAdapterFactory, BatchStatus, Built, ItemResult,
                                Entry, Reply, ResultSet, ResultTotals)


class Settings:
    def __init__(self, d):
        self.status_poll_s = d["status_poll_s"]
        self.return_poll_s = 3600.0
        self.result_working_days = 2
        self.late_return_window_days = 30


@implementer(IBankAdapter)
class AcmeAdapter:
    dialect = "acme"

    def __init__(self, bank, work_dir):
        self.bank_id = bank.bank_id
        self.work_dir = work_dir
        os.makedirs(work_dir, exist_ok=True)

    def build_batch(self, spec, items):
        name = spec.batch_no + ".json"
        rows = [[i.seq, i.amount, i.account_no] for i in items]
        with open(os.path.join(self.work_dir, name), "w") as f:
            json.dump(rows, f)
        return Built(name, "none", "", len(rows), sum(r[1] for r in rows))

    def built_exists(self, batch):
        return os.path.exists(os.path.join(self.work_dir, batch["file_name"]))

    async def deliver_batch(self, batch, recorder):
        return None

    async def submit_batch(self, batch, recorder, before):
        ids = await recorder.record([Entry("out", self.bank_id, "acme", "SUBMIT", batch["batch_no"],
                                           order_no=batch["order_no"], batch_no=batch["batch_no"])],
                                    change=before)
        return Reply("accepted", bank_ref="ACME-" + batch["batch_no"], journal_id=ids[-1])

    async def batch_status(self, batch, recorder):
        return BatchStatus("done", results={"ref": batch["file_name"], "digest": "", "key": ""})

    async def fetch_results(self, batch, recorder):
        with open(os.path.join(self.work_dir, batch["result_ref"])) as f:
            rows = json.load(f)
        lines = [ItemResult(seq, True, "0000", "", f"ACME{seq}", "20261128", amount, acct)
                 for seq, amount, acct in rows]
        total = sum(r[1] for r in rows)
        return ResultSet(ResultTotals(batch["batch_no"], len(rows), total, len(rows), total, 0, 0),
                         lambda: iter(lines),
                         lambda v: [Entry("in", self.bank_id, "acme", "RESULTS", "all paid",
                                          batch_no=batch["batch_no"], verified=v)],
                         lambda: None)

    async def send_refund(self, refund, lines, recorder, before):
        return Reply("refused", "ACME", "no refunds")

    async def refund_status(self, refund, recorder):
        return None

    async def dispute(self, dispute, recorder, before):
        return Reply("refused", "ACME", "no disputes")

    async def fetch_statement(self, period, recorder):
        return []

    async def after_results(self, batch):
        return None

    def close(self):
        return None


@provider(IBankAdapterFactory)
class factory:
    dialect = "acme"

    @staticmethod
    def load_settings(reader, data, base_dir):
        from adapters.settings import Field, positive
        t = reader.table(data, "", {"acme": Field(dict)})
        a = reader.table(t["acme"] or {}, "acme", {"status_poll_s": Field(float, 0.1, positive)})
        return Settings(a) if a["status_poll_s"] is not None else None

    @staticmethod
    def make(reactor, bank, cfg, faults):
        return AcmeAdapter(bank, os.path.join(cfg.work_dir, bank.bank_id))


@provider(IBankAdapterFactory)
class broken:
    """Registered as dialect "broken": makes an adapter that lacks most of the interface."""
    dialect = "broken"
    load_settings = factory.load_settings

    @staticmethod
    def make(reactor, bank, cfg, faults):
        @implementer(IBankAdapter)
        class Half:
            bank_id = bank.bank_id
            dialect = "broken"
            work_dir = "/nonexistent"
        return Half()
'''


@pytest.fixture
def acme_installed(tmp_path):
    site = tmp_path / "site"
    (site / "acme_bank").mkdir(parents=True)
    (site / "acme_bank" / "__init__.py").write_text(ACME)
    dist = site / "acme_bank-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-bank\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [subsidy_gateway.bank_adapters]
        acme = acme_bank:factory
        broken = acme_bank:broken
        """))
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    yield site
    sys.path.remove(str(site))
    sys.modules.pop("acme_bank", None)
    importlib.invalidate_caches()


def _bank_file(p: harness.Paths, bank_id: str, dialect: str) -> None:
    (p.banks / f"{bank_id}.toml").write_text(
        f'bank_id = "{bank_id}"\nname = "Acme 代发银行"\ndialect = "{dialect}"\n'
        f'payer_acct = "6200000012345678"\npayer_name = "补贴专户"\n\n[acme]\nstatus_poll_s = 0.1\n')


@pytest_twisted.ensureDeferred
async def test_an_adapter_from_another_package_is_found_and_pays_an_order(reactor, tmp_path, acme_installed):
    """The `acme` dialect, registered only by the test package's entry point, is loaded, verified and
    used: its order goes PAY batch -> accepted -> results -> SETTLED through the unchanged flow."""
    spec = datagen.OrderSpec(order_no="ACME0001", bank_id="acme-1", count=7, seed=3,
                             budget_unit="长丰县民政局", project_code="MZ2026-09", project_name="临时救助",
                             project_short="临时救助", region="340121",
                             funded_at="2026-11-02T09:30:00+08:00", failures={}, corrupt=None)
    p = harness.Paths(tmp_path / "inst")
    keys = harness.make_keys(p)
    sims = await harness.start_simulators(reactor, p, keys, [spec], token="test-token")
    cfg = harness.write_config(p, keys, sims.ports, token="test-token", poll_s=0.2, status_poll_s=0.1)
    _bank_file(p, "acme-1", "acme")
    harness.migrate(cfg)
    ip = InProcess(reactor, p, keys, sims, cfg)
    try:
        assert type(ip.gw.flows["acme-1"].adapter).__module__ == "acme_bank"
        ip.flow = ip.gw.flows["acme-1"]

        async def settled():
            rows = await ip.query("SELECT state FROM orders WHERE order_no = 'ACME0001'")
            return rows and rows[0]["state"] == "SETTLED"
        await ip.until(settled, 30, "the acme order SETTLED")
        paid = await ip.query("SELECT count(*) AS n, sum(amount) AS a FROM items "
                              "WHERE order_no = 'ACME0001' AND status = 'PAID'")
        sent = await ip.query("SELECT count(*) AS n FROM journal WHERE channel = 'acme' AND tx_code = 'SUBMIT'")
    finally:
        await ip.close()
    assert paid[0]["n"] == 7 and sent[0]["n"] == 1


def test_an_incomplete_adapter_stops_the_start_naming_the_bank_file(tmp_path, acme_installed):
    """An adapter that does not provide the whole IBankAdapter is refused by verifyObject when made,
    with a message naming the bank file and what is missing; an unregistered dialect names the known ones."""
    p = harness.Paths(tmp_path / "inst")
    keys = harness.make_keys(p)
    cfg_path = harness.write_config(p, keys, harness.Ports(1, 2, 3), token="t")
    _bank_file(p, "half-1", "broken")
    cfg = configmod.load(cfg_path)
    with pytest.raises(AdapterError) as e:
        make_adapter(None, cfg.banks["half-1"], cfg, Faults(""))
    assert "half-1.toml: dialect" in str(e.value) and "incomplete" in str(e.value)
    assert "build_batch" in str(e.value)
    assert factory_for("acme").dialect == "acme"


def test_site_package_imports_nothing_from_gateway():
    """A dialect can be written from adapters/interface.py and adapters/settings.py alone (issue 12):
    the site's package above imports no module of gateway/, and it does read its settings with the
    schema helpers below the daemon."""
    import ast
    tree = ast.parse(ACME)
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert [m for m in mods if m and m.split(".")[0] == "gateway"] == []
    assert {"adapters.interface", "adapters.settings"} <= mods
