"""The server's start-up: worker processes, signals, the file limit and the event loop.

:func:`serve` (``pgveil serve``) runs the proxy in ``--workers`` processes sharing the port
with SO_REUSEPORT, and forwards SIGTERM/SIGINT/SIGHUP to them.  Each worker runs
:func:`serve_forever`: a :class:`~proxy.server.Proxy` until SIGTERM/SIGINT, reloading its
rules on SIGHUP.  A worker that fails (at start: a port in use, an unreadable directory; or
later) logs its traceback and exits with status 1; the parent logs which worker ended how,
stops the others and exits with that status, so that a pgveil missing a worker never looks
healthy to its supervisor.  ``pgveil demo`` uses the same pieces.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

from . import logs
from .config import Settings
from .server import Proxy, listen_socket

log = logs.get("pgveil.server")


def install_event_loop_policy() -> None:
    """Use uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve_forever(settings: Settings, sock: socket.socket | None, ready=None) -> None:
    proxy = Proxy(settings)
    await proxy.start(sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if proxy.engine is not None:
        loop.add_signal_handler(signal.SIGHUP, proxy.reload_rules)
    log.info("listening", listen=settings.listen, upstream=settings.upstream, pid=os.getpid(),
             tls=proxy.client_tls is not None, upstream_sslmode=settings.upstream_sslmode)
    if settings.audit_mode == "off":
        log.warning("audit_off", detail="auditing is OFF (--audit-mode off): use this only to measure its cost")
    if ready:
        ready()
    await stop.wait()
    log.info("shutting_down", grace_s=settings.shutdown_grace, sessions=len(proxy.links))
    last_resort(settings.shutdown_grace)
    await proxy.stop(settings.shutdown_grace)


def last_resort(grace: float) -> None:
    """Should stopping hang (it should not), SIGALRM's default action ends the process a second
    after the grace period."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, grace + 1.0)


def _exit_now(status: int) -> None:
    """The journal is synced and closed, the sessions ended: exit without the interpreter's
    teardown of every module (a few tenths of a second of the 2 s a stop may take)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def raise_file_limit() -> int:
    """Two descriptors per client session: lift the soft limit to the hard one, as servers do."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return soft


def _worker(settings: Settings, host: str, port: int) -> None:
    """A worker process's life (it never returns): serve until stopped, then exit 0; whatever it
    raises is logged with its traceback, and the worker exits 1 (its parent reports it)."""
    status = 0
    try:
        asyncio.run(serve_forever(settings, listen_socket(host, port, reuse_port=True)))
    except KeyboardInterrupt:  # Ctrl-C before the loop took SIGINT over: a stop
        pass
    except BaseException:  # noqa: BLE001 - whatever ended the worker, its parent and the log must hear of it
        log.exception("worker_failed", worker=settings.worker_index, pid=os.getpid())
        status = 1
    finally:
        _exit_now(status)


def _wait_for(children: list[int], forward) -> int:
    """Wait for every worker (``children``: their pids, each removed once it has ended, so that
    ``forward`` only signals live ones); the first that fails is logged and the others are
    stopped.  Returns the first failing worker's status (0: all stopped cleanly)."""
    status, index = 0, {pid: i for i, pid in enumerate(children)}
    while children:
        pid, code = os.wait()
        if pid not in children:
            continue
        children.remove(pid)
        code = os.waitstatus_to_exitcode(code)
        if code == 0:
            continue
        log.error("worker_exited", worker=index[pid], pid=pid, status=code, stopping_the_others=not status)
        if not status:
            status = code if code > 0 else 128 - code  # killed by a signal: as a shell reports it
            forward(signal.SIGTERM, None)
    return status


def serve(settings: Settings) -> int:
    """Run the proxy until SIGTERM/SIGINT, in ``settings.workers`` processes."""
    install_event_loop_policy()
    raise_file_limit()
    host, port = settings.listen_address
    if settings.workers == 1:
        asyncio.run(serve_forever(settings, None))
        _exit_now(0)
    # bind once here so a bad address fails early; each worker binds its own SO_REUSEPORT socket
    probe = listen_socket(host, port, reuse_port=True, listen=False)
    if settings.console:  # the workers' control sockets: a console command covers them all
        from .console_peers import make_directory
        settings.console_peers = make_directory()
    children = []
    for _ in range(settings.workers):
        pid = os.fork()
        if pid == 0:
            probe.close()
            settings.worker_index = len(children)
            _worker(settings, host, port)
        children.append(pid)
    probe.close()

    def forward(signum, _frame):
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)  # each worker reloads its rules
    status = _wait_for(children, forward)
    if settings.console:
        from .console_peers import remove_directory
        remove_directory(settings.console_peers)
    _exit_now(status)
