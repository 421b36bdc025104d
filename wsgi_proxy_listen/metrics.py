"""
Metrics
=======

With the extra ``metrics`` (``prometheus_client``) installed, the package
counts what it does, in Prometheus's terms; without it, nothing is counted and
nothing costs. ``WSGI_PROXY_LISTEN_METRICS=0`` turns counting off with it
installed.

=================================================  ========================================
metric                                             what it counts
=================================================  ========================================
``wsgi_proxy_listen_requests_total``               requests to listener routes, by ``route``
                                                   (``session``, ``app``), ``where`` and
                                                   ``status`` (the status sent)
``wsgi_proxy_listen_forward_seconds``              time from handing a request to the hop
                                                   to its answer's status (histogram)
``wsgi_proxy_listen_listeners``                    listeners registered in this process
``wsgi_proxy_listen_published``                    of them, published in the directory (or
                                                   waiting for it to come back)
``wsgi_proxy_listen_app_starts_total``             apps' starts that registered a member
``wsgi_proxy_listen_idle_shutdowns_total``         idle members stopped
``wsgi_proxy_listen_directory_up``                 1 while the directory answers, 0 while not
                                                   (from when a process's directory starts)
``wsgi_proxy_listen_hop_connections_total``        connections to other processes' endpoints,
                                                   attempted
``wsgi_proxy_listen_owner_failures_total``         owners gone or not reached, by ``reason``
=================================================  ========================================

``where`` says who the request was handed to: ``here`` (a listener of this
process), ``forwarded`` (one of another process, through the hop),
``from_another`` (a request another process forwarded to this one), or ``none``
(the middleware answered before: a 404, a 401, a 503 for the directory...). A
listener that raised is ``where="here", status="500"``; a body over the limit or a
listener at its concurrency limit is a ``413`` or ``503`` where it was handed.
``ProxyMiddleware(metrics=False)`` counts nothing of the requests it receives;
requests forwarded to this process (``from_another``) are counted whenever
counting is on for the process.

The endpoint is the host's to mount where it wants (never under the proxy
prefix by default): :func:`wsgi_app` is a WSGI app, :func:`exposition` the body
and content type for a Flask or Django view. Under ``gunicorn -w N`` set
``PROMETHEUS_MULTIPROC_DIR`` to an empty folder before the server starts
(prometheus_client's multiprocess mode): every worker writes its values there
(its request counts every :data:`FLUSH_INTERVAL` seconds and at exit) and the
endpoint adds them up, whichever worker serves the scrape.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import typing as t
import weakref

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication

__all__ = [
    "ENABLED",
    "ENV_METRICS",
    "FLUSH_INTERVAL",
    "MULTIPROCESS",
    "Probe",
    "count",
    "exposition",
    "wanted",
    "wsgi_app",
]

#: The environment variable that turns counting off (``0``) with the extra installed.
ENV_METRICS = "WSGI_PROXY_LISTEN_METRICS"

try:
    import prometheus_client as _prometheus
except ImportError:  # pragma: no cover - the extra is installed in the tests
    _prometheus = None  # type: ignore[assignment]

#: Whether this process counts: the extra is installed and not turned off.
ENABLED = _prometheus is not None and os.environ.get(ENV_METRICS, "1").strip().lower() not in (
    "0",
    "false",
    "no",
    "off",
)

#: Whether prometheus_client's multiprocess mode is on (``PROMETHEUS_MULTIPROC_DIR``):
#: then the counts are written to its files, which the endpoint adds up across processes.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
_REQUESTS_DOC = "Requests to listener routes, by route, who answered, and status."
_REQUEST_LABELS = ("route", "where", "status")
# The gauges kept as counts of changes, as requests are: name -> help.
_GAUGES = {
    "wsgi_proxy_listen_listeners": "Listeners registered in this process.",
    "wsgi_proxy_listen_published": "Listeners of this process published in the directory.",
}

if ENABLED:
    if MULTIPROCESS:
        _REQUESTS = _prometheus.Counter(
            "wsgi_proxy_listen_requests", _REQUESTS_DOC, _REQUEST_LABELS
        )
        _GAUGES_IN_FILES = {
            name: _prometheus.Gauge(name, doc, multiprocess_mode="livesum")
            for name, doc in _GAUGES.items()
        }
    _FORWARD_SECONDS = _prometheus.Histogram(
        "wsgi_proxy_listen_forward_seconds",
        "Time from a forwarded request's arrival to its answer's status.",
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
    )
    _STARTS = _prometheus.Counter(
        "wsgi_proxy_listen_app_starts", "Apps' starts that registered a member."
    )
    _IDLE = _prometheus.Counter("wsgi_proxy_listen_idle_shutdowns", "Idle members stopped.")
    _HOP_CONNECTIONS = _prometheus.Counter(
        "wsgi_proxy_listen_hop_connections",
        "Connections to other processes' endpoints, attempted.",
    )
    _OWNER_FAILURES = _prometheus.Counter(
        "wsgi_proxy_listen_owner_failures",
        "Owners of listeners gone or not reached, by reason.",
        ("reason",),
    )

# A request (or a change of a gauge: a listener more or less) is counted in a dict of
# its thread's (no lock: no other thread writes it).
# In one process, a collector adds the threads' dicts up when scraped; in multiprocess
# mode, a thread adds what was counted to prometheus_client's files every second (a
# write to them costs a microsecond or more, too much for every request). The counts of
# a thread that ended are kept in _retired, and its dict let go.
Key = tuple[str, ...]  # (route, where, status) for a request, (gauge name,) for a gauge
_by_thread = threading.local()
_threads_counts: list[dict[Key, int]] = []
_retired: dict[Key, int] = {}
_lock = threading.RLock()  # a thread's end may be handled while its holder has it
_flushing_in = 0  # the process whose flusher runs
_written: dict[Key, int] = {}  # what this process wrote to the files
_writing = threading.Lock()


class _Holder:
    """Lives as long as its thread's local data: its end retires the thread's counts."""

    __slots__ = ("__weakref__",)


def count(route: str, where: str, status: str) -> None:
    """Count a request to a listener route: ``where`` answered it with ``status`` (a
    status line or code; its first three characters count)."""
    _add((route, where, status[:3]), 1)


def _add(key: Key, change: int) -> None:
    counts = getattr(_by_thread, "counts", None)
    if counts is None:
        counts = _by_thread.counts = {}
        holder = _by_thread.holder = _Holder()
        weakref.finalize(holder, _retire, counts)
        with _lock:
            _threads_counts.append(counts)
            if MULTIPROCESS and not _flushing_in:
                _start_flusher()
    counts[key] = counts.get(key, 0) + change


def _retire(counts: dict[Key, int]) -> None:
    with _lock:
        for key, value in counts.items():
            _retired[key] = _retired.get(key, 0) + value
        _threads_counts[:] = [kept for kept in _threads_counts if kept is not counts]


def _totals() -> dict[Key, int]:
    with _lock:
        totals = dict(_retired)
        counted = [dict(counts) for counts in _threads_counts]  # a copy is atomic
    for counts in counted:
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
    return totals


class _CountedHere:
    """``wsgi_proxy_listen_requests_total`` and the gauges from the threads' counts, in
    one process."""

    def collect(self) -> t.Iterator[t.Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        totals = _totals()
        family = CounterMetricFamily(
            "wsgi_proxy_listen_requests", _REQUESTS_DOC, labels=_REQUEST_LABELS
        )
        for key, value in sorted(totals.items()):
            if len(key) == 3:
                family.add_metric(key, value)
        yield family
        for name, doc in _GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=totals.get((name,), 0))


#: Seconds between two writes of the counts to prometheus_client's files.
FLUSH_INTERVAL = 1.0


def _start_flusher() -> None:
    """(Under ``_lock``.) In multiprocess mode, this process's flusher."""
    global _flushing_in
    _flushing_in = os.getpid()
    threading.Thread(target=_flush, name="wsgi_proxy_listen metrics", daemon=True).start()


def _flush() -> None:
    while True:
        time.sleep(FLUSH_INTERVAL)
        _write()


def _write() -> None:
    """Add what this process counted since its last write to prometheus_client's files
    (every second, and at exit)."""
    if _flushing_in != os.getpid():
        return  # nothing counted here (what a forked child inherited is its parent's)
    with _writing:
        for key, value in _totals().items():
            added = value - _written.get(key, 0)
            if not added:
                continue
            if len(key) == 3:
                _REQUESTS.labels(*key).inc(added)
            else:
                _GAUGES_IN_FILES[key[0]].set(value)
            _written[key] = value


def _after_fork_in_child() -> None:
    """A forked child counts afresh (what it inherited is the parent's to report), and
    starts its own flusher with its first count: a thread does not survive a fork."""
    global _lock, _writing, _flushing_in
    _lock, _writing = threading.RLock(), threading.Lock()
    # First: letting go of this thread's holder retires the parent's counts it held.
    _by_thread.__dict__.pop("counts", None)
    _by_thread.__dict__.pop("holder", None)
    _threads_counts.clear()
    _retired.clear()
    _written.clear()
    _flushing_in = 0


if ENABLED:
    os.register_at_fork(after_in_child=_after_fork_in_child)
    if MULTIPROCESS:
        atexit.register(_write)
    else:
        _prometheus.REGISTRY.register(_CountedHere())


_FORWARDED = "forwarded"


class Probe:
    """A request's ``start_response`` that counts the status sent, by route and by who
    answered (``where``, set on the way by the middleware)."""

    __slots__ = ("began", "counted", "route", "start_response", "where")

    def __init__(self, start_response: StartResponse, route: str, where: str = "none") -> None:
        self.start_response = start_response
        self.route = route
        self.where = where
        self.counted = False

    def forwarded(self) -> None:
        """The request goes to another process, from now."""
        self.where = _FORWARDED
        self.began = time.perf_counter()

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
    ) -> t.Callable[[bytes], object]:
        if not self.counted:  # a second call replaces an answer: counted once
            self.counted = True
            where = self.where
            count(self.route, where, status)
            if where is _FORWARDED:
                _FORWARD_SECONDS.observe(time.perf_counter() - self.began)
        return self.start_response(status, headers, exc_info)


def wanted(value: object, name: str = "metrics") -> bool:
    """Whether to count, as ``value`` asks: ``True``, ``False``, or ``None`` for
    :data:`ENABLED`.

    :raises TypeError: ``value`` is not ``True``, ``False`` or ``None``.
    :raises ValueError: ``True`` where prometheus_client is not installed (or counting
        is turned off).
    """
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be True, False or None, not {value!r}")
    if value and not ENABLED:
        raise ValueError(
            f"{name}=True needs prometheus_client: pip install wsgi-proxy-listen[metrics]"
            f" (and {ENV_METRICS} not 0)"
        )
    return ENABLED if value is None else value


# -- what changes state: called only when ENABLED -----------------------------------------


def listeners(change: int) -> None:
    _add(("wsgi_proxy_listen_listeners",), change)


def published(change: int) -> None:
    _add(("wsgi_proxy_listen_published",), change)


def app_started() -> None:
    _STARTS.inc()


def idle_shutdown() -> None:
    _IDLE.inc()


_directory_up: list[t.Any] = []  # made when a directory starts: no sample before


def directory_up(up: bool) -> None:
    with _lock:
        if not _directory_up:
            _directory_up.append(
                _prometheus.Gauge(
                    "wsgi_proxy_listen_directory_up",
                    "1 while the directory answers, 0 while it does not.",
                    multiprocess_mode="livemin",
                )
            )
    _directory_up[0].set(1 if up else 0)


def hop_connection() -> None:
    _HOP_CONNECTIONS.inc()


def owner_failure(reason: str) -> None:
    _OWNER_FAILURES.labels(reason).inc()


# -- the endpoint ----------------------------------------------------------------------------


def _registry() -> t.Any:
    if _prometheus is None:
        raise RuntimeError(
            "metrics need the extra: pip install wsgi-proxy-listen[metrics] (prometheus_client)"
        )
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = _prometheus.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return _prometheus.REGISTRY


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """The metrics in Prometheus's text format (or OpenMetrics, as ``accept`` asks),
    and its content type: every worker's under prometheus_client's multiprocess mode.

    :raises RuntimeError: the extra is not installed.
    """
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept or "")
    return encoder(_registry()), content_type


def wsgi_app() -> WSGIApplication:
    """A WSGI app that answers every request with the metrics, to mount where the host
    wants (``DispatcherMiddleware(app, {"/metrics": wsgi_app()})``).

    :raises RuntimeError: the extra is not installed.
    """
    return t.cast("WSGIApplication", _prometheus.make_wsgi_app(_registry()))
