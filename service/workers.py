"""`marc serve --workers N`: N server processes on one listening socket, each with its own model,
micro-batcher, Redis pool and near-cache (one Python event loop is the hot path's limit, so more
processes are the way to use more cores). Redis is the tier they share.

The parent binds the socket, points prometheus-client at a metrics folder
(``PROMETHEUS_MULTIPROC_DIR``, `service.metrics`: the one set in the environment, emptied of old
metric files, else a fresh temporary one removed at exit) so that any worker's /metrics answers for
all of them, then starts the workers (spawned: fresh interpreters that import prometheus-client after
the variable is set) and waits. A SIGTERM or SIGINT to the parent is passed to every worker once: each
drains (``MARC_DRAIN_SECONDS``) and stops as `marc serve` with one worker does. Workers run in their
own process group, so a Ctrl-C in a terminal reaches them only through the parent (a second one would
skip the drain). A SIGHUP (reload the models) is passed to every worker. A worker that dies on its
own stops the others and the parent exits with status 1: the process supervisor (systemd,
Kubernetes, ...) restarts the whole server.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import multiprocess

from service.metrics import MULTIPROC_DIR_VARIABLE, multiprocess_dir

if TYPE_CHECKING:
    from service.model.variant_choice import MemoKey, VariantChoice

    VariantChoices = dict[MemoKey, VariantChoice]

log = logging.getLogger(__name__)

PARENT_CHECK_SECONDS = 1.0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(
    sock: socket.socket, overrides: dict[str, Any], number: int, variant_choices: VariantChoices
) -> None:
    """One worker: the same app and graceful shutdown as a single-process `marc serve`."""
    os.setpgrp()  # terminal signals reach the parent only; it passes them on once
    # A SIGHUP before the app installs its reload handler must not end the worker (the default).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from service.app import create_app
    from service.lifecycle import DrainingServer, Lifecycle
    from service.memory import fix_malloc_thresholds
    from service.model.variant_choice import remember
    from service.settings import Settings

    fix_malloc_thresholds()  # a spawned interpreter: malloc starts untuned here too
    remember(variant_choices)  # the parent's measured variants: every worker serves the same ones
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper())
    lifecycle = Lifecycle()
    # The model is loaded in the app's lifespan, per worker.
    server = DrainingServer.serving(create_app(settings, lifecycle), settings, lifecycle)
    parent = os.getppid()

    def watch_parent() -> None:
        # A parent killed without a chance to pass a signal on must not leave workers serving.
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        log.warning("worker %d: the parent process is gone; stopping", number)
        server.handle_exit(signal.SIGTERM, None)

    threading.Thread(target=watch_parent, daemon=True, name="marc-parent-watch").start()
    server.run(sockets=[sock])


def serve_workers(
    overrides: dict[str, Any],
    *,
    host: str,
    port: int,
    workers: int,
    variant_choices: VariantChoices | None = None,
) -> int:
    """Run ``workers`` server processes on ``host``:``port`` until a signal; the exit status.
    ``variant_choices``: the parent's measured variants (`service.model.variant_choice.remembered`)."""
    given = multiprocess_dir()
    if given:
        metrics_dir = given
        os.makedirs(metrics_dir, exist_ok=True)
        for old in Path(metrics_dir).glob("*.db"):  # a previous run's values must not be added in
            old.unlink()
    else:
        metrics_dir = tempfile.mkdtemp(prefix="marc-metrics-")
    os.environ[MULTIPROC_DIR_VARIABLE] = metrics_dir
    sock = _bind(host, port)
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_worker,
            args=(sock, overrides, number, variant_choices or {}),
            name=f"marc-worker-{number}",
        )
        for number in range(workers)
    ]
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info("signal %d: stopping %d workers", signum, len(processes))
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    def reload(signum: int, _frame: object) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    signal.signal(signal.SIGHUP, reload)
    status = 0
    try:
        for process in processes:
            process.start()
        log.info("serving on http://%s:%d with %d workers (metrics in %s)", host, port, workers, metrics_dir)
        running = list(processes)
        while running:
            for process in list(running):
                process.join(timeout=0.2)
                if process.exitcode is None:
                    continue
                running.remove(process)
                multiprocess.mark_process_dead(process.pid)
                if not stopping.is_set():
                    log.error(
                        "worker %s exited (status %s); stopping the others", process.name, process.exitcode
                    )
                    status = 1
                    stop(signal.SIGTERM, None)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        sock.close()
        if not given:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return status
