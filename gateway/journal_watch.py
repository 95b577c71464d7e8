"""The journal's watch outside the database: the chain head exported, the chain checked.

A hash chain kept only in the database can be rewritten by whoever administers the
database (gateway/journal.py says how the MACs stop that). What the MACs cannot show
is entries cut off the end: so every `[journal] head_export_s` seconds, and at stop,
the head (last id, its hash, the first keyed id) is appended with its MAC as one JSON
line to `[journal] head_file`, a file opened O_APPEND and mode 0600 that an operator
ships elsewhere (syslog, WORM storage, a printout). A line is written only when the
head has moved, and only after checking that the head's entry is really there with a
valid MAC and that the chain still passes through the head exported before: a cut or
rewritten tail is alarmed, never exported.

Every `[journal] self_verify_s` seconds the daemon verifies the journal itself: the
whole chain once after start, then only the entries appended since the last check
(after re-reading the last entry it verified, so a rewind is found), in chunks on its
own thread so that neither the reactor nor the database pool waits on it. A failure
raises one `journal-broken` alarm episode with one journal entry; the episode is
cleared when a later full check passes (after the database was restored).
"""

from __future__ import annotations

from typing import Callable

from sqlalchemy import Engine, select
from twisted.application import service
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from gateway.config import JournalAuth
from gateway.journal import (ChainReport, ChainWalker, Entry, HeadFile, HeadFileError, HeadMark, Journal,
                             JournalKeyError, current_head, head_file_summary, head_line, read_anchor,
                             read_head_row)
from gateway.models import journal as journal_t
from gateway.rules import clear_alarm, iso, raise_alarm

log = Logger()

ALARM_KIND = "journal-broken"
EXPORT_ALARM_KIND = "journal-head-export"
FULL_EVERY_S = 86400.0   # the incremental check cannot see an old entry edited in place: re-walk daily


def check_at_start(engine: Engine, cfg) -> str | None:  # noqa: ANN001
    """Why the daemon must not start with this journal and key, or None.

    A keyed journal without a key would get unkeyed entries (which verification rejects);
    a key that does not produce the head entry's MAC is another key, and every entry made
    with it would fail verification.
    """
    key, where = cfg.journal_auth.key, f"{cfg.file}: journal.key_file"
    with engine.connect() as conn:
        head = current_head(conn, key)
    if head.keyed_from is not None and key is None:
        return (f"{where}: the journal is keyed from entry {head.keyed_from} (its entries carry MACs): "
                "configure the journal key file it was written with")
    if key is not None and head.keyed_from is not None and head.problem:
        return (f"{where}: {head.problem}: the key file {cfg.journal_auth.key_file} is not the one the journal "
                "was written with, or the journal was altered (gatewayctl journal verify tells which entry)")
    return None


class JournalWatch(service.Service):
    """Exports the head on a schedule and at stop, and verifies the chain incrementally."""

    def __init__(self, reactor, engine: Engine, journal: Journal, auth: JournalAuth, *,
                 ticker_factory: Callable, run: Callable | None = None, chunk: int = 5000):
        self.reactor, self.engine, self.journal, self.auth = reactor, engine, journal, auth
        self.key = auth.key
        self.chunk = chunk
        self.setName("journal-watch")
        self._pool: ThreadPool | None = None
        if run is None:
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name="journal-watch")
            run = lambda fn, *a: deferToThreadPool(reactor, self._pool, fn, *a)  # noqa: E731
        self.run = run
        interval = auth.head_export_s if auth.head_file else auth.self_verify_s
        self.ticker = ticker_factory(self.tick, interval) if interval else None
        self.stopping = False
        self.loaded = False                      # the head file's last line read
        self.last_mark: HeadMark | None = None   # the last head we exported (or read back at start)
        self.file_keyed_from: int | None = None
        self.walker: ChainWalker | None = None
        self.caught_up = False
        self.entries_walked = 0                  # entries read by the self-check since start
        self.next_verify = 0.0
        self.next_full = 0.0
        self.broken: tuple[int | None, str] | None = None
        self.export_failing = False

    # --- service -------------------------------------------------------------------

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.stopping = False
        if self._pool is not None:
            self._pool.start()
        if self.ticker is not None:
            self.ticker.startService()

    @defer.inlineCallbacks
    def stopService(self):  # noqa: N802
        """The running step ends (at its next chunk), then the head is exported one last time."""
        super().stopService()
        self.stopping = True
        try:
            if self.ticker is not None and self.ticker.running:
                yield defer.maybeDeferred(self.ticker.stopService)
            if self.auth.head_file and self.broken is None:
                yield self.export()
        except Exception:  # noqa: BLE001
            log.failure("journal head export at stop failed")
        finally:
            if self._pool is not None:
                self._pool.stop()

    # --- the periodic job ----------------------------------------------------------

    async def tick(self) -> None:
        if self.auth.head_file and self.broken is None:
            await self.export()
        now = self.reactor.seconds()
        first = self.walker is None and self.broken is None and not self.caught_up
        if self.auth.self_verify_s and (first or now >= self.next_verify):
            if now >= self.next_full:
                self.walker, self.next_full = None, now + FULL_EVERY_S
            await self.verify()

    async def export(self) -> None:
        """Append the head to the head file if it moved and still extends the last export."""
        if not self.loaded:
            if not await self._load_head_file():
                return
        try:
            failed = await self.run(self._export, iso(self.reactor.seconds()))
        except OSError as e:
            # A full disk or a missing folder: one episode, not a log line per minute.
            self.export_failing = True
            await self.run(self._export_alarm, f"cannot append the journal head to {self.auth.head_file}: "
                                               f"{e.strerror or e}")
            return
        if self.export_failing:
            self.export_failing = False
            await self.run(self._export_alarm, None)
        if failed is not None:
            await self._broken(*failed)
            self.next_verify = 0.0     # walk the chain now: it names the first broken entry

    async def verify(self) -> None:
        """Verify what was appended since the last check (everything, the first time or after a break)."""
        if not self.loaded and self.auth.head_file:
            if not await self._load_head_file():
                return
        if self.walker is None or self.broken is not None:
            marks = [self.last_mark] if self.last_mark is not None else []
            self.walker = ChainWalker(self.journal.archive_dir, self.key, keyed_from=self.file_keyed_from,
                                      marks=marks)
            self.caught_up = False
        while not self.stopping:
            done, failed = await self.run(self._verify_chunk, self.walker)
            if failed is not None:
                self.walker = None
                self.next_verify = self.reactor.seconds() + self.auth.self_verify_s
                await self._broken(failed.first_bad_id, failed.reason)
                return
            if done:
                self.caught_up = True
                self.next_verify = self.reactor.seconds() + self.auth.self_verify_s
                if self.broken is not None:
                    await self.run(self._clear)
                    self.broken = None
                    log.info("journal verified again: the journal-broken alarm is cleared")
                return

    # --- blocking parts, off the reactor thread --------------------------------------

    async def _load_head_file(self) -> bool:
        try:
            _, self.last_mark, self.file_keyed_from = await self.run(
                _summary_if_exists, self.auth.head_file, self.key)
        except HeadFileError as e:
            await self._broken(None, str(e))
            return False
        self.loaded = True
        return True

    def _export(self, at: str) -> tuple[int | None, str] | None:
        try:
            with HeadFile(self.auth.head_file, self.key) as f:
                # Under the file's lock: the last line is the reference, whoever wrote it.
                last = f.last_mark() or self.last_mark
                if last is not None:
                    self.last_mark = last
                    if self.file_keyed_from is None:
                        self.file_keyed_from = last.keyed_from
                with self.engine.connect() as conn:
                    head, failed = self._check_head(conn, last)
                if failed is not None or head is None:
                    return failed
                f.append(head_line(self.key, at, head.last_id, head.last_hash, head.keyed_from))
        except HeadFileError as e:
            return None, str(e)
        if self.file_keyed_from is None:
            self.file_keyed_from = head.keyed_from
        self.last_mark = HeadMark(head.last_id, head.last_hash, f"the head exported at {at}", head.keyed_from)
        return None

    def _check_head(self, conn, last: HeadMark | None):  # noqa: ANN001
        """(the head to export or None when nothing is new, why it must not be exported or None)."""
        head = current_head(conn, self.key)
        if head.problem:
            return None, (head.last_id, f"the head cannot be exported: {head.problem}")
        if self.file_keyed_from is not None and head.keyed_from != self.file_keyed_from:
            return None, (self.file_keyed_from, f"the head row records the journal keyed from "
                                                f"{head.keyed_from or 'no entry'} but the exported heads from "
                                                f"entry {self.file_keyed_from}: MACs were removed")
        if last is not None:
            if head.last_id < last.last_id:
                return None, (head.last_id + 1, f"the head went back from entry {last.last_id} ({last.source}) "
                                                f"to entry {head.last_id}: entries were deleted from the end")
            h = conn.execute(select(journal_t.c.hash).where(journal_t.c.id == last.last_id)).scalar()
            anchor = read_anchor(conn) if h is None else None
            if anchor is not None and last.last_id <= anchor.last_id:
                # The exported entry was moved to a cold file since: the cut's hash stands for it
                # (at the cut itself), else `gatewayctl journal verify` checks it in the cold file.
                h = anchor.last_hash if last.last_id == anchor.last_id else last.head_hash
            if h != last.head_hash:
                return None, (last.last_id, f"entry {last.last_id} no longer has the hash exported in "
                                            f"{last.source}: it or an entry before it was rewritten")
            if head.last_id == last.last_id:
                return None, None          # nothing new: no line
        return (head if head.last_id else None), None

    def _verify_chunk(self, walker: ChainWalker) -> tuple[bool, ChainReport | None]:
        with self.engine.connect() as conn:
            head = read_head_row(conn)
            if head is None:
                return True, walker.fail(None, "the journal_head row is missing")
            last_id = walker.report.last_id
            anchor = read_anchor(conn)
            if anchor is not None and last_id <= anchor.last_id:
                # A fresh walk, or entries moved to a cold file since the last check
                # (`gatewayctl journal archive`): go on from the cut; the cold files are
                # checked by `gatewayctl journal verify`.
                if last_id == anchor.last_id and walker.report.last_hash != anchor.last_hash:
                    return True, walker.fail(last_id, f"entry {last_id}, verified before, is not the "
                                                      "entry the cut (journal_cuts) records")
                if last_id < anchor.last_id:
                    failed = walker.start_at(anchor, head)
                    if failed is not None:
                        return True, failed
                last_id = anchor.last_id
            elif last_id:
                h = conn.execute(select(journal_t.c.hash).where(journal_t.c.id == last_id)).scalar()
                if h != walker.report.last_hash:
                    return True, walker.fail(last_id, f"entry {last_id}, verified before, was "
                                                      f"{'deleted' if h is None else 'rewritten'}")
            if head.last_id < last_id:
                return True, walker.fail(head.last_id + 1, f"the head row went back from entry {last_id} to "
                                                           f"{head.last_id}: entries were deleted from the end")
            rows = conn.execute(select(journal_t).where(journal_t.c.id > last_id, journal_t.c.id <= head.last_id)
                                .order_by(journal_t.c.id).limit(self.chunk)).mappings().all()
            self.entries_walked += len(rows)
            for row in rows:
                failed = walker.step(row, head)
                if failed is not None:
                    return True, failed
            if walker.report.last_id < head.last_id:
                return False, None
            r = walker.finish(head)
            return True, (None if r.ok else r)

    async def _broken(self, first_bad_id: int | None, reason: str) -> None:
        message = (f"journal verification failed at entry {first_bad_id}: {reason}" if first_bad_id is not None
                   else f"journal verification failed: {reason}")
        log.critical("JOURNAL BROKEN: {message}", message=message)
        new = self.broken is None      # one journal entry per episode; the alarm's message follows
        self.broken = (first_bad_id, reason)
        await self.run(self._alarm, message, first_bad_id, new)

    def _alarm(self, message: str, first_bad_id: int | None, new: bool) -> None:
        at = iso(self.reactor.seconds())
        with self.engine.begin() as conn:
            jid = None
            if new:
                try:
                    jid = self.journal.append(conn, Entry("event", "gateway", "daemon", ALARM_KIND, message,
                                                          verified=f"failed: {message}"[:200]), at)
                except JournalKeyError:
                    pass   # a keyed journal and no key: the daemon refuses to start that way anyway
            raise_alarm(conn, at, "critical", ALARM_KIND, message, journal_id=jid)

    def _export_alarm(self, message: str | None) -> None:
        at = iso(self.reactor.seconds())
        with self.engine.begin() as conn:
            if message is None:
                clear_alarm(conn, at, EXPORT_ALARM_KIND)
            else:
                raise_alarm(conn, at, "warning", EXPORT_ALARM_KIND, message)

    def _clear(self) -> None:
        with self.engine.begin() as conn:
            clear_alarm(conn, iso(self.reactor.seconds()), ALARM_KIND)


def _summary_if_exists(path: str, key) -> tuple[int, HeadMark | None, int | None]:  # noqa: ANN001
    import os
    if not os.path.exists(path):
        return 0, None, None
    return head_file_summary(path, key)
