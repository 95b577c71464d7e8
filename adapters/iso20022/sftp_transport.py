"""ISO 20022 documents over SFTP, for banks that take files instead of HTTPS (iso20022.md, Transport).

The same two operations as the HTTPS client, with the cnbank directory and
complete-file rules: a pain.001 is uploaded to the bank's in folder as
`{MsgId}.xml` under a temporary name and renamed when whole (the same bytes
again are the status question, as POST is); the bank's reports are the files
of its out folder, taken in name order after the last one kept (the cursor),
each read under a size cap (a file over it is refused on its own, unread, and the
cursor moves past it).
"""

from __future__ import annotations

import io

from adapters.sftp import RemoteFileTooLarge, SFTPClient
from protocols import iso20022 as iso
from protocols.iso_feed import FeedReport


class SftpIsoTransport:
    """post_payment / reports / close, like adapters.https.HttpsBankClient, over one SFTP endpoint."""

    def __init__(self, client: SFTPClient, in_dir: str, out_dir: str, max_file_bytes: int,
                 max_document_bytes: int | None = None):
        self.client = client
        self.in_dir = in_dir
        self.out_dir = out_dir
        self.max_file_bytes = min(max_file_bytes, max_document_bytes or max_file_bytes)

    async def post_payment(self, doc: bytes) -> tuple[int, dict]:
        header, _ = iso.read_pain001(io.BytesIO(doc))
        session = await self.client.connect()
        try:
            await session.upload_bytes(doc, self.in_dir, f"{header.msg_id}.xml")
        finally:
            await session.close()
        return 202, {"msg_id": header.msg_id, "status": "RCVD"}

    async def remove_upload(self, msg_id: str) -> None:
        """Remove our pain.001 `{MsgId}.xml` from the bank's in folder (gone already is fine)."""
        session = await self.client.connect()
        try:
            if f"{msg_id}.xml" in await session.listdir(self.in_dir):
                await session.remove(f"{self.in_dir}/{msg_id}.xml")
        finally:
            await session.close()

    async def reports(self, since: str | None, limit: int = 100) -> tuple[list[FeedReport], str | None]:
        session = await self.client.connect()
        try:
            names = sorted(n for n in await session.listdir(self.out_dir)
                           if n.endswith(".xml") and (since is None or n > since))[:limit]
            out = []
            held = 0
            for name in names:
                if held >= self.max_file_bytes:   # enough held for one page: the rest next time
                    break
                try:
                    # Capped while reading: the size is taken from the open handle first.
                    data = await session.read_bytes(f"{self.out_dir}/{name}", self.max_file_bytes)
                except RemoteFileTooLarge as e:
                    out.append(FeedReport(cursor=name, type="unknown", refused=f"{e}: not read"))
                    continue
                try:
                    kind = iso.message_type(io.BytesIO(data))
                except iso.Iso20022Error:
                    kind = "unknown"
                # Taken as it is: the feed's checks judge it (and refuse what is not UTF-8 XML).
                out.append(FeedReport(cursor=name, type=kind, document=data, size=len(data)))
                held += len(data)
        finally:
            await session.close()
        return out, (out[-1].cursor if out else since)

    def close(self):
        return None
