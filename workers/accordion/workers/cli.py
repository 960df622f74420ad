"""Typer commands of the data plane, mounted by the root `accordion` CLI.

``profile`` (latency per batch size, printed as an InferenceService profile block), ``served``
(the same block as a serving worker runs it, from its /metrics), ``load``
(open-loop load generator), ``serve`` (a worker), ``route`` (a router) and ``fetch`` (a worker
pod's storage initializer: downloads its model). Heavy imports (torch, boto3,
aiohttp apps) happen inside the commands, so `accordion --help` stays fast.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from accordion.workers.activator import DEFAULT_MAX_QUEUED
from accordion.workers.config import (
    MODEL_LOAD_FAILED_EXIT,
    REPORT_TOKEN_FILE_ENV,
    REPORT_URL_ENV,
    BatchingConfig,
    BatchingMode,
    PolicyName,
    WorkerConfig,
)

app = typer.Typer(
    help="Data plane: workers, router, profiler, load generator.", no_args_is_help=True
)


MODEL_LOAD_FAILED = MODEL_LOAD_FAILED_EXIT
"""Exit status of `serve` when the model cannot be loaded: the operator tells it from a crash."""


def _fail(message: str, code: int = 1) -> NoReturn:
    """Exit with status `code` and a one-line message on stderr (no traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


_BIND_ERRORS = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}


def _check_port(host: str, port: int) -> None:
    """Fail fast (before loading a model) when `host:port` cannot be listened on."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does
        try:
            sock.bind((host, port))
        except OSError as exc:
            _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter("batch sizes are integers separated by commas") from None
    if not sizes or any(b < 1 for b in sizes):
        raise typer.BadParameter("batch sizes must be >= 1")
    return sizes


def _batch_sizes(text: str) -> list[int]:
    """Batch sizes as given to ``--batch-sizes``: sizes and ranges separated by commas,
    ``1-8,16,32`` (a range: every size from its first to its last), sorted, each once."""
    sizes: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            lo, hi = int(first), int(last if dash else first)
        except ValueError:
            raise typer.BadParameter(
                f"{part!r}: batch sizes are integers or ranges (1-8), separated by commas"
            ) from None
        if lo < 1 or hi < lo:
            raise typer.BadParameter(f"{part!r}: sizes are >= 1 and a range goes up (1-8)")
        sizes.update(range(lo, hi + 1))
    if not sizes:
        raise typer.BadParameter("no batch size given")
    return sorted(sizes)


@app.command()
def profile(
    model: Annotated[str, typer.Option(help="builtin:NAME or a TorchScript / torch.export file")],
    batch_sizes: Annotated[
        str,
        typer.Option(
            help="sizes and ranges, comma-separated: 1,2,4,8 or 1-8,16,32. A CPU model's "
            "latency can step between powers of two (demo-xl runs 3 slower than 4): profile "
            "every size up to the cap there (the batcher draws a line between sizes)"
        ),
    ] = "1,2,4,8,16,32",
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    pool: Annotated[str, typer.Option(help="DevicePool name to print in the block")] = "cpu",
    repeats: Annotated[int, typer.Option(min=3)] = 30,
    threads: Annotated[int, typer.Option(min=1, help="torch threads")] = 1,
    input_shape: Annotated[
        str | None, typer.Option(help="one sample's shape for files: 3,224,224")
    ] = None,
    stages: Annotated[
        bool,
        typer.Option(
            "--stages", help="per stage / per cell step (batching modes node and cellular)"
        ),
    ] = False,
    lengths: Annotated[
        str | None,
        typer.Option(
            help="with --stages, a cell model: the workload's request lengths in steps "
            "(comma-separated, or @FILE of one per line) for the equivalent request profile"
        ),
    ] = None,
    split: Annotated[
        bool,
        typer.Option(
            "--split",
            help="cut the model at every top-level part: each part's latency and output size "
            "(a variant's `stages`, for pipelines across pools)",
        ),
    ] = False,
) -> None:
    """Measure latency percentiles per batch size and print the variant's profile block.

    With --stages: the latency of every stage (or of the cell's step) per batch size, as
    comments, and the per-request profile the planner uses for that batching mode: the stages
    summed (node), or the step profile at the workload's length distribution (cellular; see
    `profiler.equivalent_request_profile`)."""
    from rich.progress import Progress

    from accordion.workers.profiler import profile_model, profile_yaml

    sizes = _batch_sizes(batch_sizes)
    shape = _sizes(input_shape) if input_shape else None
    if split:  # pipelines (`splitting`)
        from accordion.workers.splitting import SplitError, profile_split_of

        try:
            text = profile_split_of(
                model, sizes, pool, repeats=repeats, torch_threads=threads, input_shape=shape
            )
        except SplitError as exc:
            _fail(f"{model}: {exc}")
        typer.echo(text, nl=False)
        return
    if stages or lengths:
        from accordion.workers.profiler import (
            equivalent_request_profile,
            lengths_comment,
            profile_stages_of,
            stages_comment,
            summed_stage_profile,
        )

        per_stage, cell = profile_stages_of(
            model,
            sizes,
            device=device,
            torch_threads=threads,
            repeats=max(3, repeats // 6),
            input_shape=shape,
        )
        if cell:
            text = lengths or ""
            if text.startswith("@"):
                text = ",".join(Path(text[1:]).read_text().split())
            steps = _sizes(text) if text else None
            # without lengths: the step profile itself (for `batching.lengths`)
            request = (
                per_stage[0] if steps is None else equivalent_request_profile(per_stage[0], steps)
            )
            header = stages_comment(per_stage, cell) + lengths_comment(steps)
        else:
            request = summed_stage_profile(per_stage)
            header = stages_comment(per_stage, cell)
        typer.echo(header + profile_yaml(request, pool), nl=False)
        return
    with Progress(transient=True) as progress:
        task = progress.add_task(f"profiling {model}", total=len(sizes))
        results = profile_model(
            model,
            sizes,
            device=device,
            torch_threads=threads,
            repeats=repeats,
            input_shape=shape,
            on_progress=lambda _: progress.advance(task),
        )
    typer.echo(profile_yaml(results, pool), nl=False)


@app.command()
def served(
    url: Annotated[str, typer.Option(help="a serving worker's URL, e.g. http://127.0.0.1:8080")],
    base: Annotated[
        Path | None,
        typer.Option(
            help="the variant's profile block (`profile`'s output) to correct: its sizes the "
            "worker has not run enough of are scaled by the median served / profiled p50"
        ),
    ] = None,
    pool: Annotated[str, typer.Option(help="DevicePool name to print in the block")] = "cpu",
    model: Annotated[str | None, typer.Option(help="only this model's executions")] = None,
) -> None:
    """Print the profile block as a serving worker runs it: per batch size, the percentiles of
    its recent executions (`accordion.workers.served`, read from its /metrics), on the machine
    and beside the load it serves, where `profile` times the model alone. Paste it over the
    variant's profile for that pool: the planner and its batching model then count on the
    speed the worker really has."""
    import urllib.request

    import yaml

    from accordion.workers.profiler import BatchProfile, profile_yaml
    from accordion.workers.served import held_profile, parse_served

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError as exc:
        _fail(f"{url}: {exc}")
    read = parse_served(text, model)
    if not read:
        _fail(f"{url}: no batch size has enough executions yet")
    points = {b: point for b, (_, point) in read.items()}
    if base is not None:
        entries = yaml.safe_load(base.read_text())["profiles"]
        entry = next((e for e in entries if e.get("pool") == pool), entries[0])
        profiled = {
            int(b["batchSize"]): (b["p50Ms"] / 1e3, b["p90Ms"] / 1e3, b["p99Ms"] / 1e3)
            for b in entry["batches"]
        }
        points = held_profile(profiled, points)
    samples = ", ".join(f"{b}: {n}" for b, (n, _) in read.items())
    typer.echo(f"# executions behind each served size: {samples}")
    rows = [
        BatchProfile(b, round(p50 * 1e3, 3), round(p90 * 1e3, 3), round(p99 * 1e3, 3))
        for b, (p50, p90, p99) in points.items()
    ]
    typer.echo(profile_yaml(rows, pool), nl=False)


@app.command()
def load(
    url: Annotated[str, typer.Option(help="loopback base URL of a worker or router")],
    model: Annotated[str, typer.Option(help="model (worker) or service (router) name")],
    slo_ms: Annotated[float, typer.Option(help="deadline of every request, ms")] = 100.0,
    rate: Annotated[float | None, typer.Option(help="Poisson arrival rate, requests/s")] = None,
    ramp: Annotated[str | None, typer.Option(help="START:END rates of a linear ramp")] = None,
    trace: Annotated[Path | None, typer.Option(help="file of arrival offsets in seconds")] = None,
    duration_s: Annotated[float, typer.Option(min=0.1, max=600)] = 10.0,
    max_requests: Annotated[int, typer.Option(min=1, max=1_000_000)] = 100_000,
    input_name: Annotated[str, typer.Option()] = "input",
    input_shape: Annotated[str | None, typer.Option(help="one sample's shape, for routers")] = None,
    datatype: Annotated[str, typer.Option()] = "FP32",
    binary: Annotated[
        bool,
        typer.Option(
            help="send KServe v2 binary tensor extension bodies (needs --input-shape)",
        ),
    ] = False,
    seed: int = 0,
) -> None:
    """Open-loop load: report SLO attainment, goodput and latency percentiles (JSON)."""
    from accordion.workers.loadgen import (
        build_binary_body,
        build_body,
        check_loopback,
        poisson_schedule,
        ramp_schedule,
        run_load,
        trace_schedule,
    )

    try:
        check_loopback(url)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if sum(x is not None for x in (rate, ramp, trace)) != 1:
        raise typer.BadParameter("give exactly one of --rate, --ramp, --trace")
    if rate is not None:
        schedule = poisson_schedule(rate, duration_s, seed)
    elif ramp is not None:
        try:
            start, end = (float(x) for x in ramp.split(":"))
        except ValueError:
            raise typer.BadParameter("--ramp is START:END, e.g. 50:500") from None
        schedule = ramp_schedule(start, end, duration_s, seed)
    else:
        assert trace is not None
        schedule = trace_schedule(trace)
    binary_header_length: int | None = None
    body: bytes | None
    if binary:
        if not input_shape:
            raise typer.BadParameter("--binary needs --input-shape")
        body, binary_header_length = build_binary_body(input_name, datatype, _sizes(input_shape))
    else:
        body = build_body(input_name, datatype, _sizes(input_shape)) if input_shape else None
    report = asyncio.run(
        run_load(
            url,
            model,
            schedule,
            slo_ms=slo_ms,
            body=body,
            binary_header_length=binary_header_length,
            max_requests=max_requests,
            max_duration_s=duration_s,
        )
    )
    typer.echo(json.dumps(report.summary(), indent=2))


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="builtin:NAME or a model file")] = "builtin:demo-s",
    name: Annotated[str | None, typer.Option(help="served model name")] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="WorkerConfig file (JSON/YAML)", exists=True, dir_okay=False),
    ] = None,
    config_json: Annotated[
        str | None,
        typer.Option(
            envvar="ACCORDION_WORKER_CONFIG",
            help="WorkerConfig as JSON (the operator sets it in $ACCORDION_WORKER_CONFIG)",
        ),
    ] = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    device: str = "cpu",
    threads: Annotated[int, typer.Option(min=1)] = 1,
    slo_ms: float = 100.0,
    policy: Annotated[str, typer.Option(help="slo, none, triton or clipper")] = "slo",
    max_batch_size: Annotated[int, typer.Option(min=1)] = 32,
    max_queue_delay_ms: float = 5.0,
    max_queue: Annotated[int, typer.Option(min=1)] = 1024,
    batching: Annotated[
        str,
        typer.Option(
            help="batching granularity: request, cellular (recurrent / decoder cells) or node "
            "(stages of a feed-forward model)"
        ),
    ] = "request",
    input_shape: Annotated[str | None, typer.Option(help="one sample's shape, for files")] = None,
    grpc_port: Annotated[
        int | None,
        typer.Option(help="serve the v2 gRPC protocol on this port too (KServe's: 8081)"),
    ] = None,
) -> None:
    """Run a worker: one model variant behind the KServe v2 protocol (REST, and gRPC)."""
    if config is not None and config_json:
        raise typer.BadParameter("give either --config or --config-json, not both")
    if config_json:
        try:
            cfg = WorkerConfig.model_validate_json(config_json)
        except ValueError as exc:
            raise typer.BadParameter(f"--config-json / $ACCORDION_WORKER_CONFIG: {exc}") from None
    elif config is not None:
        text = config.read_text()
        try:
            if config.suffix in {".yaml", ".yml"}:
                import yaml

                cfg = WorkerConfig.model_validate(yaml.safe_load(text))
            else:
                cfg = WorkerConfig.model_validate_json(text)
        except ValueError as exc:
            raise typer.BadParameter(f"--config {config}: {exc}") from None
    else:
        if policy not in ("slo", "none", "triton", "clipper"):
            raise typer.BadParameter("--policy is one of slo, none, triton, clipper")
        chosen: PolicyName = policy  # type: ignore[assignment]
        if batching not in ("request", "cellular", "node"):
            raise typer.BadParameter("--batching is one of request, cellular, node")
        mode: BatchingMode = batching  # type: ignore[assignment]
        served = name or (
            model.removeprefix("builtin:") if model.startswith("builtin:") else Path(model).stem
        )
        cfg = WorkerConfig(
            model_name=served,
            model=model,
            input_shape=_sizes(input_shape) if input_shape else None,
            device=device,
            torch_threads=threads,
            slo_ms=slo_ms,
            batching=BatchingConfig(
                policy=chosen,
                max_batch_size=max_batch_size,
                max_queue_delay_ms=max_queue_delay_ms,
                max_queue=max_queue,
                mode=mode,
            ),
            host=host,
            port=port,
        )
    if grpc_port is not None:
        cfg = cfg.model_copy(update={"grpc_port": grpc_port})
    if not cfg.model.startswith("builtin:") and not Path(cfg.model).is_file():
        _fail(f"cannot load model: model file {cfg.model} does not exist", MODEL_LOAD_FAILED)
    _check_port(cfg.host, cfg.port)
    from accordion.workers.server import serve as run_worker  # imports torch: after the checks

    try:
        run_worker(cfg)
    except (FileNotFoundError, ValueError) as exc:  # the model cannot be loaded as configured
        _fail(f"cannot load model {cfg.model!r}: {exc}", MODEL_LOAD_FAILED)
    except OSError as exc:
        if exc.errno not in _BIND_ERRORS:
            raise
        _fail(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}")


@app.command()
def route(
    table: Annotated[
        Path,
        typer.Option(
            help="routing table file (JSON/YAML), reloaded on change", exists=True, dir_okay=False
        ),
    ],
    host: str = "127.0.0.1",
    port: int = 8000,
    grpc_port: Annotated[
        int | None,
        typer.Option(help="serve the v2 gRPC protocol on this port too (Triton's: 8001)"),
    ] = None,
    report_url: Annotated[
        str | None,
        typer.Option(
            envvar=REPORT_URL_ENV,
            help="report arrivals and the table in use to the operator at this URL "
            "(its answers may carry newer tables)",
        ),
    ] = None,
    report_token_file: Annotated[
        Path | None,
        typer.Option(
            envvar=REPORT_TOKEN_FILE_ENV,
            dir_okay=False,
            help="send the token in this file with every report (Authorization: Bearer), read "
            "again when it changes: the pod's projected ServiceAccount token",
        ),
    ] = None,
    report_interval: Annotated[
        float, typer.Option(min=0.05, help="seconds between reports (the demand interval)")
    ] = 1.0,
    report_heartbeat: Annotated[
        float, typer.Option(min=0.0, help="longest silence, seconds, while the rate is steady")
    ] = 10.0,
    max_queued: Annotated[
        int,
        typer.Option(
            min=0,
            help="samples the activator holds at most while no replica is ready (scale to zero)",
        ),
    ] = DEFAULT_MAX_QUEUED,
    drain_seconds: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="on SIGTERM, serve on this long, not ready and closing connections, before "
            "stopping (a pod's endpoints and its clients catch up meanwhile); 0: stop at once",
        ),
    ] = 0.0,
) -> None:
    """Run a router: one InferenceService's entry point (v2 REST, and gRPC)."""
    from accordion.workers.reporting import ReportPolicy
    from accordion.workers.router import Router, serve_router

    if report_url is not None and not report_url.startswith(("http://", "https://")):
        raise typer.BadParameter(f"--report-url must be an http(s) URL, not {report_url!r}")
    try:
        router = Router(
            table,
            report_url=report_url or None,
            report_policy=ReportPolicy(report_interval, report_heartbeat),
            max_queued=max_queued,
            report_token_file=report_token_file,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    _check_port(host, port)
    try:
        serve_router(router, host, port, grpc_port, drain_seconds)
    except OSError as exc:
        if exc.errno not in _BIND_ERRORS:
            raise
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


@app.command()
def fetch(
    storage_uri: Annotated[str, typer.Argument(help="s3://, http(s)://, pvc://, file:// or path")],
    dest: Annotated[Path, typer.Option(help="directory to download into")] = Path("/mnt/models"),
) -> None:
    """Download a model before the worker starts (a worker pod's init container); print its path."""
    from accordion.workers.fetch import FetchError
    from accordion.workers.fetch import fetch as download
    from accordion.workers.storage import StorageUriError

    try:
        typer.echo(download(storage_uri, dest))
    except (StorageUriError, FetchError) as exc:
        _fail(str(exc))
