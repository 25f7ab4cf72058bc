"""The agent process: wires store, metrics, watcher, cases and API, and runs their loops."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from .api.app import make_app
from .api.auth import KeyRing
from .api.routes import change_doc
from .api.tls import ServerTls
from .audit import AuditLog
from .cases import verification
from .cases.service import CaseService, parse_case_id, rfc3339, summary
from .changes.drift import AttributeDrift
from .changes.files import FileWatcher, WatchedPath
from .config import Config
from .engine import local as local_models
from .engine.kb import KnowledgeBase
from .engine.service import Engine, signature_of
from .hub import Hub
from .ingest import redact
from .metrics.derive import SpanMetrics
from .notify import Notifier
from .signals import Signal
from .spans import Batch
from .store import db
from .store.audit import AuditStore
from .store.cases import CaseStore
from .store.changes import Change, ChangeStore
from .store.kb import KbStore
from .store.spans import SpanStore
from .watch import detectors, quality, trend
from .watch.overview import overview as build_overview
from .watch.patterns import TracePatterns
from .watch.promql import MetricsSource, SourceError
from .watch.schemes import Scheme, detect

logger = logging.getLogger(__name__)
STOP_TIMEOUT_S = 10.0
"""How long stopping waits for each background task to end once cancelled."""
MODEL_RETRY_S = 15.0
"""How often a model that is not installed yet is looked for again."""


class _Collector:
    def __init__(self, metrics: SpanMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Any:
        return self._metrics.collect()


class Agent:
    """One agent: `await start()`, serve, `await stop()`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.keys = KeyRing(config.api_keys, config.keys_file)
        hold = config.new_series_hold_s
        self.metrics = SpanMetrics(config.derive_metrics, config.series_cap, hold)
        self.metrics_registry = CollectorRegistry(auto_describe=False)
        self.metrics_registry.register(_Collector(self.metrics))
        self.hub = Hub()
        self.drift = AttributeDrift(config.drift_keys, warmup_s=config.drift_warmup_s)
        self.patterns = TracePatterns(config.patterns)
        self.redactor = redact.build(config.redaction)
        """Applied to every OTLP request before it is decoded; None without rules."""
        self._trend_due = 0.0
        self.prometheus = (
            self._source("prometheus", config.prometheus_url) if config.prometheus_url else None
        )
        self.victoriametrics = (
            self._source("victoriametrics", config.victoriametrics_url)
            if config.victoriametrics_url
            else None
        )
        self.scheme: Scheme | None = None
        self._overview_cache: dict[int, tuple[float, dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        self._runner: web.AppRunner | None = None
        self.url: str | None = None
        self.tls: ServerTls | None = None
        self.file_watcher: FileWatcher | None = None
        self.knowledge: KnowledgeBase | None = None
        self.model_problems: dict[str, str] = {}
        self.on_demand: list[local_models.OnDemand] = []
        """The models opened when first needed, closed again when idle."""
        self._analysed: set[tuple[str, str]] = set()

    def _source(self, name: str, url: str) -> MetricsSource:
        """A metrics source backed off from one detection cycle after a failure."""
        return MetricsSource(
            name,
            url,
            self.config.source_timeout_s,
            backoff_s=self.config.scrape_interval_s,
            backoff_max_s=self.config.source_backoff_max_s,
        )

    async def start(self) -> None:
        if self.config.tls_cert is not None and self.config.tls_key is not None:
            # First: a certificate that cannot be served stops the start before anything opens.
            self.tls = ServerTls(self.config.tls_cert, self.config.tls_key)
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self._writer = await db.connect(self.config.db_path)
        await db.migrate(self._writer)
        self._reader = await db.connect(self.config.db_path)
        self.span_store = SpanStore(
            self.config.db_path,
            self._reader,
            min_free_bytes=self.config.min_free_disk_mb * 2**20,
            max_pending_spans=self.config.max_pending_spans,
            max_pending_bytes=self.config.max_pending_bytes,
        )
        self.span_store.start()
        self.case_store = CaseStore(self._writer, self._reader)
        self.change_store = ChangeStore(self._writer, self._reader)
        self.case_service = CaseService(
            self.case_store,
            self.span_store,
            self.config.grouping_window_s,
            self.config.exemplar_traces,
            changes=self.change_store,
            change_doc=change_doc,
        )
        self.case_service.listeners.append(self._publish_case)
        self.audit = AuditLog(AuditStore(self._writer, self._reader), self.config.data_dir)
        self.case_service.audit = self.audit.case_events
        self.notifier = Notifier(self.config.notify)
        if self.notifier.receivers:
            self.case_service.notify = self.notifier.notify
        self.engine = Engine(
            self._load_case,
            self._signal_stages,
            self.case_service.attach_analysis,
            self.config.engine,
        )
        if not len(self.keys):
            logger.warning("no API keys configured: every request except open routes gets 401")
        self._runner = web.AppRunner(
            make_app(self),
            access_log=None,
            handle_signals=False,
            auto_decompress=False,
            shutdown_timeout=5.0,
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.config.host,
            self.config.port,
            backlog=1024,
            ssl_context=self.tls.context if self.tls else None,
        )
        await site.start()
        port = self._runner.addresses[0][1]
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://{self.config.host}:{port}"
        logger.info("listening on %s, data in %s", self.url, self.config.data_dir)
        self._tasks.append(asyncio.create_task(self._watch_loop(), name="watch"))
        self._tasks.append(asyncio.create_task(self.engine.run(), name="engine"))
        self._tasks.append(asyncio.create_task(self._load_models(), name="models"))
        if self.config.engine.model_idle_s > 0:
            self._tasks.append(
                asyncio.create_task(self._idle_models_loop(), name="idle-models")
            )
        self._tasks.append(asyncio.create_task(self._retention_loop(), name="retention"))
        self._tasks.append(asyncio.create_task(self._checkpoint_loop(), name="checkpoint"))
        self._tasks.append(asyncio.create_task(self._audit_loop(), name="audit"))
        if self.tls is not None:
            reload = self.tls.run(self.config.tls_reload_s)
            self._tasks.append(asyncio.create_task(reload, name="tls"))
        if self.notifier.receivers:
            self._tasks.append(asyncio.create_task(self.notifier.run(), name="notify"))
        if self.config.watch_files:
            watched = [
                WatchedPath(Path(item["path"]), item["service"])
                for item in self.config.watch_files
            ]
            self.file_watcher = FileWatcher(watched, self.record_change)
            self._tasks.append(asyncio.create_task(self.file_watcher.run(), name="files"))

    async def stop(self) -> None:
        """Stop serving and close the database, whatever fails on the way: a connection left
        open keeps its thread, and the process from exiting. Stopping twice does nothing."""
        if self._stopped:
            return
        self._stopped = True
        try:
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                _, stuck = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_S)
                for task in stuck:  # it swallowed the cancellation: stop waiting for it
                    logger.error("task %s did not stop when cancelled", task.get_name())
            self._tasks.clear()
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None
        finally:
            try:
                await self.audit.flush_refused(now=time.time() + 60)
                await self.audit.checkpoint()
            except Exception:
                logger.exception("audit upkeep at stop failed")
            for model in self.on_demand:
                try:
                    await asyncio.to_thread(model.close)
                except Exception:
                    logger.exception("closing a model at stop failed")
            try:
                await self.span_store.stop()
            finally:
                await self._reader.close()
                await self._writer.close()

    async def ingest(self, batch: Batch, signal: str) -> None:
        """Commit a decoded request, then count it; raises StoreUnavailable when not stored."""
        await self.span_store.write(batch.spans, batch.details, batch.size_bytes)
        self.metrics.observe(batch, signal)
        self.patterns.observe(batch.spans)
        for change in self.drift.observe(batch.spans):
            await self.record_change(change)

    async def record_change(self, change: Change) -> None:
        """Store a change and push it to live subscribers."""
        await self.change_store.add(change)
        self.hub.publish("change", change_doc(change))

    async def overview(self, range_s: int) -> dict[str, Any]:
        """The overview, computed at most once per second per range for all callers."""
        now = time.time()
        cached = self._overview_cache.get(range_s)
        if cached and now - cached[0] < 1.0:
            return cached[1]
        data = await build_overview(
            self.prometheus,
            self.victoriametrics,
            now,
            range_s=range_s,
            retention_s=self.config.prometheus_retention_s,
        )
        self._overview_cache[range_s] = (now, data)
        return data

    async def _load_models(self) -> None:
        """Load the engine's models in the background: the agent serves meanwhile.

        A model that is not there yet (llama-cpp-python still installing, the model store
        not yet set up) is looked for again every MODEL_RETRY_S and used from the moment it
        loads; until then the engine ranks on evidence alone."""
        config = self.config.engine
        if not (config.reasoning_model or config.embedding_model):
            return
        roles: tuple[str, ...] = local_models.ROLES
        told = False
        while True:
            loaded = await asyncio.to_thread(local_models.load, config, roles)
            for role in roles:
                self.model_problems.pop(role, None)
            self.model_problems.update(loaded.problems or {})
            self.on_demand.extend(loaded.on_demand)
            if loaded.embedder is not None:
                await self._use_embedder(loaded.embedder)
            # The knowledge base embeds its seeds once, at its first load: the embedder it
            # opened for that is not needed again until an analysis.
            for model in loaded.on_demand:
                await asyncio.to_thread(model.close)
            if loaded.reasoner is not None:
                self.engine.reasoner = loaded.reasoner
            if not loaded.pending:
                return
            roles = tuple(role for role in roles if role in loaded.pending)
            if not told:
                logger.info(
                    "%s: not there yet, looked for every %.0f s; analyses rank on evidence"
                    " alone meanwhile",
                    " and ".join(f"{role} model" for role in roles),
                    MODEL_RETRY_S,
                )
                told = True
            await asyncio.sleep(MODEL_RETRY_S)

    async def _idle_models_loop(self) -> None:
        """Close the models that have been unused for `model_idle_s`; they open again when
        an analysis needs them."""
        idle_s = self.config.engine.model_idle_s
        while True:
            await asyncio.sleep(min(30.0, idle_s / 2))
            for model in list(self.on_demand):
                try:
                    await asyncio.to_thread(model.close_if_idle)
                except Exception:
                    logger.exception("closing an idle model failed")

    async def _use_embedder(self, embedder: Any) -> None:
        knowledge = KnowledgeBase(KbStore(self._writer, self._reader), embedder)
        try:
            await knowledge.load()
        except Exception as error:
            self.model_problems["knowledge_base"] = str(error)[:300]
            logger.warning("knowledge base not loaded: %s", error)
        else:
            self.knowledge = self.engine.memory = knowledge

    def refused_auth(self, source: str | None, path: str) -> None:
        """A request refused for its key: counted for the audit log."""
        audit = getattr(self, "audit", None)
        if audit is not None:
            audit.refused(source, path)

    async def _load_case(self, case_id: str) -> dict[str, Any] | None:
        number = parse_case_id(case_id)
        return await self.case_store.get(number) if number is not None else None

    async def _signal_stages(self, doc: dict[str, Any]) -> set[str]:
        """The operations of the spans a case's signals are about, around its first signal."""
        first = float(doc.get("first_signal_at") or time.time())
        names = sorted({s["span_name"] for s in doc.get("signals", []) if s.get("span_name")})
        found = await self.span_store.operations(
            doc["service"], names, int((first - 900) * 1e9), int((first + 60) * 1e9)
        )
        return set(found.values())

    async def _publish_case(self, doc: dict[str, Any]) -> None:
        self.hub.publish("case", summary(doc))

    async def _watch_loop(self) -> None:
        interval = self.config.scrape_interval_s
        while True:
            started = time.monotonic()
            try:
                await self.watch_once(time.time())
            except Exception:
                logger.exception("watch cycle failed")
            await asyncio.sleep(max(0.1, interval - (time.monotonic() - started)))

    async def watch_once(self, now: float) -> None:
        """One detection cycle at `now`: run the detectors, hand their signals to cases."""
        await self._verify(now)
        found = self.patterns.evaluate(now)
        found += await self._metric_signals(now)
        for signal in found:
            doc = await self.case_service.on_signal(signal)
            # A signal seen again changes no conclusion; a new one in the case may.
            if (doc["id"], signal.key) not in self._analysed:
                self._analysed.add((doc["id"], signal.key))
                self.engine.submit(doc["id"])
        if len(self.hub) and (self.prometheus or self.victoriametrics):
            self.hub.publish("overview", await self.overview(900))

    async def _verify(self, now: float) -> None:
        """Check the fixes being verified: resolved when the query held for its window,
        back to investigating when it did not by the deadline."""
        source = self.prometheus or self.victoriametrics
        docs, _ = await self.case_store.list(state="VERIFYING", limit=100)
        for doc in docs:
            spec = doc.get("verification") or {}
            outcome = await verification.judge(
                source, spec, now, self.config.verify_deadline_factor
            )
            if outcome is None:
                continue
            holds, detail = outcome
            done = await self.case_service.finish_verification(doc["id"], holds, detail, now)
            if done is not None and holds and self.knowledge is not None:
                resolution = done["resolution"] or {}
                if resolution.get("root_cause"):
                    signature = (done.get("analysis") or {}).get("signature") or signature_of(
                        done
                    )
                    notes = [e["text"] for e in done["timeline"] if e.get("type") == "note"]
                    fix = "; ".join([resolution.get("fix_applied") or "", *notes]).strip("; ")
                    await self.knowledge.learn(
                        signature, resolution["root_cause"], fix, done["id"]
                    )

    async def _metric_signals(self, now: float) -> list[Signal]:
        """The signals of the PromQL detectors; none while no source answers."""
        source = self.prometheus or self.victoriametrics
        if source is None:
            return []
        found: list[Signal] = []
        try:
            if self.scheme is None:
                self.scheme = await detect(source, now)
                if self.scheme is not None:
                    logger.info("spanmetrics found: %s", self.scheme.prefix)
            if self.scheme is not None:
                found += await detectors.evaluate(
                    source, self.scheme, now, self.config.detector
                )
            found += await quality.evaluate(source, now, self.config.quality)
            if now >= self._trend_due:
                # A week is read from VictoriaMetrics when there is one: it keeps history
                # longer and is where older history is backfilled.
                history = self.victoriametrics or source
                self._trend_due = now + self.config.trend_interval_s
                found += await trend.evaluate(history, self.scheme, now, self.config.trend)
        except SourceError:
            pass  # the source records the error and logs state changes itself
        return found

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            try:
                await self.span_store.checkpoint()
            except Exception as exc:
                logger.warning("WAL checkpoint failed: %s", exc)

    async def _audit_loop(self) -> None:
        """Write the refused authentications of each past minute; checkpoint the head."""
        next_checkpoint = time.monotonic() + self.config.audit_checkpoint_s
        while True:
            await asyncio.sleep(10)
            try:
                await self.audit.flush_refused()
                if time.monotonic() >= next_checkpoint:
                    next_checkpoint = time.monotonic() + self.config.audit_checkpoint_s
                    await self.audit.checkpoint()
            except Exception:
                logger.exception("audit upkeep failed")

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.retention_interval_s)
            try:
                await self.span_store.prune(
                    self.config.retention_age_s, self.config.retention_bytes
                )
            except Exception:
                logger.exception("retention failed")


async def serve(config: Config, ready: asyncio.Event | None = None) -> None:
    """Run the agent until cancelled."""
    agent = Agent(config)
    await agent.start()
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await agent.stop()


__all__ = ["Agent", "rfc3339", "serve"]
