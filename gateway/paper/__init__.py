"""Articles 25-27 on paper and in the archive.

What finance staff and auditors hold in their hands: each batch's result sheet
(交易结果) sealed with the gateway's SM2 key (`sheets`, `seal`), the handover
register (交接登记簿, `register`), the per-project ledger (台账, `ledger`), the
monthly and yearly reports as XLSX and PDF (`workbook`, `printed`, and the yearly
figures in `gateway.reports`), the year's bound volume (装订成册, `volume`) and the
auditor's archive that verifies offline (`archive`). Everything here reads the
database and the journal; nothing changes an order, an item or a batch.
Amounts are integer fen until the last moment, printed as yuan with two decimals.
"""
