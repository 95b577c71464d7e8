"""ISO 20022 documents over SFTP, for banks that take files instead of HTTPS (iso20022.md, Transport).

The same two operations as the HTTPS client, with the cnbank directory and
complete-file rules: a pain.001 is uploaded to the bank's in folder as
`{MsgId}.xml` under a temporary name and renamed when whole (the same bytes
again are the status question, as POST is); the bank's reports are the files
of its out folder, taken in name order after the last one kept (the cursor),
each read under a size cap.
"""

from __future__ import annotations

import io

from adapters.sftp import SFTPClient
from protocols import iso20022 as iso


class SftpIsoTransport:
    """post_payment / reports / close, like adapters.https.HttpsBankClient, over one SFTP endpoint."""

    def __init__(self, client: SFTPClient, in_dir: str, out_dir: str, max_file_bytes: int):
        self.client = client
        self.in_dir = in_dir
        self.out_dir = out_dir
        self.max_file_bytes = max_file_bytes

    async def post_payment(self, doc: bytes) -> tuple[int, dict]:
        header, _ = iso.read_pain001(io.BytesIO(doc))
        session = await self.client.connect()
        try:
            await session.upload_bytes(doc, self.in_dir, f"{header.msg_id}.xml")
        finally:
            await session.close()
        return 202, {"msg_id": header.msg_id, "status": "RCVD"}

    async def reports(self, since: str | None, limit: int = 100) -> tuple[list[dict], str | None]:
        session = await self.client.connect()
        try:
            names = sorted(n for n in await session.listdir(self.out_dir)
                           if n.endswith(".xml") and (since is None or n > since))[:limit]
            out = []
            for name in names:
                data = await session.read_bytes(f"{self.out_dir}/{name}", self.max_file_bytes)
                try:
                    kind = iso.message_type(io.BytesIO(data))
                except iso.Iso20022Error:
                    kind = "unknown"
                # Not UTF-8 is kept as it is: the feed's checks refuse it, journaled.
                out.append({"cursor": name, "type": kind, "document": data.decode("utf-8", "replace")})
        finally:
            await session.close()
        return out, (out[-1]["cursor"] if out else since)

    def close(self):
        return None
