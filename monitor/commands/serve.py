"""`thermostat serve`: one process for every role, or one role per process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from monitor.auth import is_loopback
from monitor.errors import ConfigError, redact_url
from monitor.logging import setup_logging
from monitor.runtime import ROLES, Runtime, open_runtime
from monitor.settings import Settings, load_settings

log = logging.getLogger("monitor.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", choices=ROLES, default="all", help="which role(s) to run")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument(
        "--port", type=port_number, default=8080, help="port to bind (default 8080)"
    )
    parser.add_argument(
        "--until-idle",
        action="store_true",
        help="with --role worker: run the due recalibration jobs and re-scores, then exit "
        "(no HTTP server; for a Kubernetes CronJob or a systemd timer)",
    )


def port_number(text: str) -> int:
    """An argparse type for a TCP port: the OS would silently wrap 70000 to 4464."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0 to 65535, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type for a count that must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def check_binding(settings: Settings, host: str) -> None:
    """Refuse a non-loopback bind without both tokens; say what loopback-only means."""
    missing = [
        name
        for name, token in (
            ("THERMOSTAT_ADMIN_TOKEN", settings.admin_token),
            ("THERMOSTAT_FEEDBACK_TOKEN", settings.feedback_token),
        )
        if token is None
    ]
    if not missing:
        return
    if not is_loopback(host):
        raise ConfigError(f"refusing to bind {host} without {' and '.join(missing)}")
    log.warning("%s not set: answering loopback clients only", " and ".join(missing))


def check_worker_device(settings: Settings, role: str) -> None:
    """Refuse a worker device that is not there, rather than fail every job on it.

    Only an explicit device needs torch to check; 'auto' and 'cpu' always work,
    and the api role never imports torch.
    """
    if role not in ("all", "worker") or settings.worker.device in ("auto", "cpu"):
        return
    from monitor.jobs.recalibration import resolve_device

    try:
        resolve_device(settings.worker.device)
    except ValueError as exc:
        raise ConfigError(
            f"worker.device: {exc} (set THERMOSTAT_WORKER__DEVICE to auto or cpu)"
        ) from None


def run(args: argparse.Namespace) -> int:
    if args.until_idle and args.role != "worker":
        args.parser.error("--until-idle runs the worker role only: add --role worker")
    settings = load_settings()
    setup_logging(settings.log_level)
    # Fail before binding, with one line, on what the app's lifespan would otherwise
    # refuse with a traceback: bad alert rules (the scheduler loads them at start;
    # cached, so its own load reuses this one), an unreachable database, a stale schema,
    # a spool folder another process is using.
    if args.role in ("all", "scheduler"):
        from monitor.alerting.rules import load_rules

        load_rules(settings.alert_rules)
    check_worker_device(settings, args.role)
    if args.until_idle:
        return asyncio.run(run_worker_until_idle(open_runtime(settings, "worker")))
    check_binding(settings, args.host)
    open_runtime(settings, args.role).engine.dispose()
    if args.role in ("all", "api"):
        from monitor.proxy.spool import claim_spool

        # Held until this process exits (the recorder's own claim shares it): a
        # second process on this spool is refused here, in one line.
        claim_spool(settings.spool_dir, settings.recorder.spool_claim_wait_s)
    log.info(
        "thermostat %s on http://%s:%d (database %s)",
        args.role,
        args.host,
        args.port,
        redact_url(settings.resolved_database_url),
    )
    import uvicorn

    from monitor.app import create_app

    uvicorn.run(
        create_app(settings, args.role),
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        **server_options(settings),
    )
    return 0


def server_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn serves the app (the keep-alive: see `ProxySettings`); the
    tests' in-process servers take the same, or they race their clients."""
    return {
        "access_log": False,
        "timeout_graceful_shutdown": 15,
        "timeout_keep_alive": settings.proxy.keep_alive_s,
    }


async def run_worker_until_idle(runtime: Runtime) -> int:
    """`serve --role worker --until-idle`: drain the job queue, then exit.

    Exit status 0 once nothing is due, 1 if a poll failed (the database went
    away: the next run retries), 128 + N on signal N, after the running job
    was handed back to the queue.
    """
    from monitor.jobs.worker import WorkerService

    worker = WorkerService(runtime)
    loop = asyncio.get_running_loop()
    signalled: asyncio.Future[int] = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _first_signal, signalled, sig)
    drain = asyncio.create_task(worker.run_until_idle(), name="worker until idle")
    try:
        await asyncio.wait({drain, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if not drain.done():
            _ignore_further_signals(loop)
            await worker.stop()
            log.info("worker stopped by signal %d before the queue was drained", signalled.result())
            return 128 + signalled.result()
        try:
            jobs = drain.result()
        except Exception as exc:
            log.error("worker poll failed: %s: %s; exiting", type(exc).__name__, exc)
            return 1
        log.info("worker idle after %d job(s): exiting", jobs)
        return 0
    finally:
        await runtime.stop()


def _first_signal(signalled: asyncio.Future[int], sig: signal.Signals) -> None:
    if not signalled.done():
        signalled.set_result(int(sig))


def _ignore_further_signals(loop: asyncio.AbstractEventLoop) -> None:
    """Once stopping, a second Ctrl-C must neither cut the hand-back short nor land
    as a KeyboardInterrupt in the interpreter's exit, after the loop has closed."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)  # restores the default: ignore after it
        signal.signal(sig, signal.SIG_IGN)
