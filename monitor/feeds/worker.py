"""Feed parsing in worker processes with a memory cap and a timeout: hostile feeds fail alone."""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import resource
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import Any

import structlog

from monitor.errors import ParseError
from monitor.feeds.parse import parse_feed
from monitor.models import Article

log = structlog.get_logger(__name__)

# Extra CPU seconds a worker may use per call beyond the timeout before the kernel kills it:
# the backstop for a worker the parent could not kill.
_CPU_SLACK = 5
# A fresh worker imports feedparser, nh3 and pydantic: allow for a slow, busy machine.
_STARTUP_TIMEOUT = 60.0


def _limit_memory(memory_limit_mb: int) -> None:
    """Pool initializer: cap the worker's address space so a memory bomb fails inside it."""
    limit = memory_limit_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _die_with_parent()


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the daemon dies, even by SIGKILL, so no orphan lingers."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pipe to the parent closing still ends it
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _limit_cpu(seconds: float) -> None:
    """Let this call use at most ``seconds`` more CPU time (SIGXCPU ends the worker after)."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = used.ru_utime + used.ru_stime
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(spent + seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _noop() -> None:
    """Nothing: submitted by warm_up to wait for a worker to come up."""


def _parse_in_worker(content: bytes, cpu_budget: float,
                     kwargs: dict[str, Any]) -> tuple[bool, list[Article] | str]:
    """(True, articles) or (False, reason): errors go back as text, never as pickled exceptions."""
    _limit_cpu(cpu_budget)
    try:
        return True, parse_feed(content, **kwargs)
    except ParseError as exc:
        return False, exc.reason
    except MemoryError:
        return False, "parsing needed more memory than the worker's limit allows"
    except RecursionError:
        return False, "the feed is nested too deeply to parse"
    except Exception as exc:  # a parser bug must fail one feed, not the worker
        return False, f"parser failed: {type(exc).__name__}: {str(exc)[:200]}"


class ParserPool:
    """Runs parse_feed in worker processes; a crash, timeout or memory blow-up fails one feed."""

    def __init__(self, *, workers: int = 1, memory_limit_mb: int = 512,
                 timeout: float = 30.0) -> None:
        self._workers = workers
        self._memory_limit_mb = memory_limit_mb
        self._timeout = timeout
        self._executor: ProcessPoolExecutor | None = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # spawn: a fresh interpreter with no inherited sockets, threads or locks of the daemon.
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_limit_memory,
            initargs=(self._memory_limit_mb,),
        )

    async def _restart(self, broken: ProcessPoolExecutor) -> None:
        """Start a fresh pool, kill the workers of ``broken`` (once, however many calls saw it)."""
        if self._executor is not broken:
            return
        self._executor = self._start()
        await asyncio.to_thread(_kill, broken)  # joining processes blocks: keep it off the loop

    async def warm_up(self) -> None:
        """Wait until a worker has started, so the first parse's timeout is not spent importing."""
        if self._executor is None:
            raise RuntimeError("ParserPool is closed")
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.run_in_executor(self._executor, _noop),
                               max(self._timeout, _STARTUP_TIMEOUT))

    async def parse(self, content: bytes, **kwargs: Any) -> list[Article]:
        """parse_feed(content, **kwargs) in a worker; ParseError on bad input, crash or timeout."""
        if self._executor is None:
            raise RuntimeError("ParserPool is closed")
        executor = self._executor
        feed = str(kwargs.get("feed_name", "?"))
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        future = loop.run_in_executor(executor, _parse_in_worker, content,
                                      self._timeout + _CPU_SLACK, kwargs)
        try:
            ok, payload = await asyncio.wait_for(future, self._timeout)
        except TimeoutError as exc:
            await self._restart(executor)
            log.warning("parse_timeout", feed=feed, timeout=self._timeout, size=len(content))
            raise ParseError(feed, f"parsing took longer than {self._timeout:g}s and was "
                             "stopped; the feed may be huge or hostile") from exc
        except BrokenProcessPool as exc:
            await self._restart(executor)
            log.warning("parse_worker_died", feed=feed, size=len(content),
                        elapsed=round(time.monotonic() - started, 2))
            raise ParseError(feed, "the parser process died (out of memory or CPU time?); "
                             "the feed may be huge or hostile") from exc
        if ok and isinstance(payload, list):
            return payload
        raise ParseError(feed, str(payload))

    def close(self) -> None:
        """Stop the workers now; in-flight calls fail with ParseError."""
        executor, self._executor = self._executor, None
        if executor is not None:
            _kill(executor)

    def __enter__(self) -> ParserPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _kill(executor: ProcessPoolExecutor) -> None:
    """Kill an executor's workers (a stuck parse never returns on its own) and shut it down."""
    # _processes is private, but ProcessPoolExecutor has no public way to stop a running task.
    processes = list((getattr(executor, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.kill()
    executor.shutdown(wait=True, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)
