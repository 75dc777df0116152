"""A job's own report socket, for jobs the host's policy runs as another user (``run_as``).

The agent's Unix socket is its user's, mode 0600, so a job running as another user cannot
connect to it; and UDP 127.0.0.1:8791 can be held by any process, whose datagrams then go
nowhere. So the worker opens a socket for that job alone, in a fresh folder that only the job's
user (and root) can enter, hands its path to the job as ``$HWPROBE_REPORT_SOCKET`` (where
:mod:`hwprobe.report` looks first), and relays every message to the agent's socket under the
job's own id: a job cannot count tokens for another job. The socket speaks the agent's protocol
(:mod:`hwprobe.channel`: newline-separated messages on a stream, ``flush`` answered once the
server has everything), so the report library needs nothing new.

When the job ends, the worker drains the socket (the job's last report sits in the kernel after
the job is gone) and relays what it held before it flushes the agent and reports the end, then
removes the socket and its folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from hwprobe import channel

log = logging.getLogger("hwprobe.worker")

MAX_UNSENT = 1000  # messages kept while the agent's socket is away (a restart); older ones are dropped
DRAIN_S = 2.0


class RelayChannel(channel.Channel):
    """Takes one job's messages and sends them on to the agent's socket as that job's."""

    def __init__(self, job_id: int, agent_socket: str, port: int) -> None:
        super().__init__(channel.Ledger())  # the relay keeps no counts; its ledger is never drained
        self.job_id, self.port = job_id, port
        self.client = channel.SocketClient(agent_socket)
        self._lock = threading.Lock()
        self._unsent: list[bytes] = []
        self.relayed = 0
        self.rewritten = 0  # messages that named another job (or none): counted as this job's
        self.lost = 0

    def handle(self, data: bytes) -> dict[str, Any] | None:
        message = channel.decode(data)
        if message is None:
            # The agent counts what it cannot read (the machine page shows it): pass it on as it is.
            self.malformed += 1
            self._forward(data[: channel.MAX_DATAGRAM + 1])
            return None
        self.received += 1
        if message["kind"] == "flush":
            return message  # the listener answers it through flush()
        if message["job"] != self.job_id:
            self.rewritten += 1
            if self.rewritten == 1:
                log.warning("job %s reported for job %s: counted as its own", self.job_id, message["job"])
        if message["kind"] == "tokens":
            out = channel.token_datagram(
                self.job_id,
                message["source"],
                message["prompt"],
                message["generated"],
                message["train"],
                active_s=message["active_s"],
            )
        else:
            out = channel.scrape_datagram(
                message["url"], self.job_id, message["engine"], message["stop"], message["from_zero"]
            )
        self._forward(out)
        return message

    def _forward(self, *messages: bytes, last_try: bool = False) -> None:
        with self._lock:
            self._unsent.extend(messages)
            if len(self._unsent) > MAX_UNSENT:
                over = len(self._unsent) - MAX_UNSENT
                self.lost += over
                del self._unsent[:over]
                log.warning("job %s: the agent's socket is away; %d report(s) dropped so far", self.job_id, self.lost)
            if not self._unsent:
                return
            if self.client.send(*self._unsent):
                self.relayed += len(self._unsent)
                self._unsent.clear()
            elif last_try:
                # The job has ended and the agent still cannot be reached: better a datagram than
                # nothing (the worker's own counts do the same).
                for data in self._unsent:
                    channel.send(data, self.port)
                self._unsent.clear()

    def flush(self, timeout_s: float = channel.FLUSH_TIMEOUT_S) -> bool:
        """Relay what is waiting, then have the agent deliver everything to the server."""
        self._forward()
        return self.client.flush(timeout_s + 1.0)

    def close(self) -> None:
        self._forward(last_try=True)
        self.client.close()


class JobRelay:
    """The socket of one job: ``path`` goes into its environment; :meth:`close` when it ended.

    With ``uid`` (the job's user), the folder (0700) and the socket (0600) become that user's;
    without, they stay the worker's (a job run as the worker's own user, as in tests).
    """

    def __init__(
        self,
        job_id: int,
        agent_socket: str,
        port: int,
        uid: int | None = None,
        gid: int | None = None,
        parent: str | None = None,
    ) -> None:
        # A fresh folder in the temporary directory: the worker's state folder is 0700 (the job's
        # user could not pass through it), and a socket path must stay under 108 bytes.
        self.folder = Path(tempfile.mkdtemp(prefix=f"hwprobe-job{job_id}-", dir=parent))
        try:
            self.channel = RelayChannel(job_id, agent_socket, port)
            self.listener = channel.SocketListener(self.folder / channel.SOCKET_NAME, self.channel)
            if uid is not None:
                os.chown(self.listener.path, uid, -1 if gid is None else gid)
                os.chown(self.folder, uid, -1 if gid is None else gid)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self.listener.start()
        self._closed = False

    @property
    def path(self) -> str:
        return str(self.listener.path)

    def close(self, flush: bool = False) -> bool:
        """Relay what the job already wrote, stop, remove the socket and its folder; with
        ``flush``, also have the agent deliver it all to the server (True once it has)."""
        if self._closed:
            return False
        self._closed = True
        self.listener.drain(DRAIN_S)
        self.listener.close()
        done = self.channel.flush() if flush else False
        self.channel.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.folder)
        if self.channel.lost:
            log.warning(
                "job %s: %d report(s) could not be relayed to the agent", self.channel.job_id, self.channel.lost
            )
        return done
