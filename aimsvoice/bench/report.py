"""How bench results are shown: rich tables for a terminal, markdown entries for BENCHMARKS.md."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..outputs import replacing
from .context import ContextReport, context_line
from .compute import STAGES, BatchRun, ComputeReport
from .suite import INTERRUPTION, PAUSE, TURN_TAKING
from .turns import METHOD, REFERENCE, SampleResult, TurnsReport, summarize

TASK_TITLES = {
    TURN_TAKING: "smooth turn-taking",
    INTERRUPTION: "user interruption",
    PAUSE: "pause handling",
}
# (summary key, label) per task; the arrow says which way is better.
TASK_METRICS = {
    TURN_TAKING: (("take_over_rate", "take-over rate ↑"), ("latency_s", "latency s ↓")),
    INTERRUPTION: (
        ("take_over_rate", "take-over rate ↑"),
        ("response_latency_s", "response latency s ↓"),
        ("stop_latency_s", "stop latency s ↓"),
        ("talking_at_barge_in", "talking at barge-in"),
    ),
    PAUSE: (("take_over_rate", "take-over rate ↓"),),
}


def compute_view(report: ComputeReport) -> RenderableType:
    """Per batch size, per-stage percentiles of a tick; then the batch sizes side by side, and the verdicts."""
    parts: list[RenderableType] = []
    for run in report.runs:
        title = f"compute per 80 ms tick, batch {run.batch_size}: {report.model}, {report.device}, {report.precision}, context {report.context}"
        table = Table(title=title, title_justify="left")
        table.add_column("stage")
        for column in ("p50 ms", "p95 ms", "p99 ms", "max ms", "mean ms"):
            table.add_column(column, justify="right")
        for stage in STAGES:
            s = run.stages[stage]
            table.add_row(stage, *(f"{v:.2f}" for v in (s.p50, s.p95, s.p99, s.max, s.mean)))
        parts.append(table)
    if len(report.runs) > 1:
        table = Table(title="batch sizes side by side", title_justify="left")
        for column in BATCH_COLUMNS:
            table.add_column(column, justify="right")
        for run in report.runs:
            table.add_row(*_batch_cells(run))
        parts.append(table)
    parts.append(Text(_compute_summary(report)))
    return Group(*parts)


BATCH_COLUMNS = ("batch", "tick p50 ms", "tick p99 ms", "per conversation ms", "real-time factor", "frames/s", "memory GiB")


def _batch_cells(run: BatchRun) -> tuple[str, ...]:
    total = run.stages["total"]
    return (str(run.batch_size), f"{total.p50:.2f}", f"{total.p99:.2f}", f"{run.per_conversation_ms:.2f}",
            f"{run.real_time_factor:.3f}", f"{run.frames_per_s:.1f}", f"{run.peak_memory_bytes / 2**30:.2f}")


def _compute_summary(report: ComputeReport) -> str:
    lines = [f"{report.frames} ticks per batch size after {report.warmup} warm-up ticks (model ready in {report.load_s:.1f} s); "
             f"memory is the {report.runs[0].memory_kind}."]
    for run in report.runs:
        headroom = run.to_json()["headroom_ms"]
        lines.append(
            f"Batch {run.batch_size}: real-time factor {run.real_time_factor:.3f}, {run.per_conversation_ms:.2f} ms per "
            f"conversation, headroom {headroom['p50']:.1f} ms (p50) / {headroom['p99']:.1f} ms (p99) of the "
            f"{run.budget_ms:.0f} ms budget. Verdict: {run.verdict()}."
        )
    return "\n".join(lines)


def turns_view(report: TurnsReport) -> RenderableType:
    """Per task: our figures (model time, and live with --live) beside the published ones; then each sample."""
    summary = summarize(report.model_time)
    live = summarize(report.live) if report.live is not None else None
    parts: list[RenderableType] = []
    for task, measured in summary.items():
        references = REFERENCE.get(task, {})
        table = Table(title=f"{TASK_TITLES[task]} ({measured['samples']} samples)", title_justify="left")
        table.add_column("metric", no_wrap=True)
        table.add_column("model time", justify="right")
        if live is not None:
            table.add_column("live", justify="right")
        for name in references:
            table.add_column(name, justify="right", style="dim")
        for key, label in TASK_METRICS[task]:
            ours = [_format(measured[key], key, measured["samples"])]
            if live is not None:
                ours.append(_format(live[task][key], key, measured["samples"]))
            table.add_row(label, *ours, *(_format(ref.get(key), key, None) for ref in references.values()))
        parts.append(table)
    parts.append(_samples_table(report))
    if report.live is not None:
        parts.append(Text(_live_line(report.live)))
    heard = "; live: through the real-time loop on a paced virtual device, as a user hears it" if live else ""
    parts.append(Text(f"model time: no compute, no audio buffering{heard}. Method: {METHOD}.", style="dim"))
    return Group(*parts)


def _live_line(results: tuple[SampleResult, ...]) -> str:
    """How the live loop coped, over all samples: compute, what it shed, underruns."""
    stats = [r.live for r in results if r.live is not None]
    compute = [s.compute_mean_ms for s in stats]
    return (
        f"live loop: compute {min(compute):.1f}-{max(compute):.1f} ms per step (sample means), "
        f"input shed {sum(s.input_shed_ms for s in stats) / 1000:.2f} s, output shed "
        f"{sum(s.output_shed_ms for s in stats) / 1000:.2f} s, {sum(s.underruns for s in stats)} playback underruns "
        f"over {len(stats)} samples."
    )


def _samples_table(report: TurnsReport) -> Table:
    runs = [("", report.model_time)] + ([("live ", report.live)] if report.live is not None else [])
    table = Table(title="samples", title_justify="left")
    table.add_column("sample", no_wrap=True)
    for prefix, _ in runs:
        for column in ("take-over", "latency s", "stop latency s"):
            table.add_column(prefix + column, justify="right")
    table.add_column("agent speech s (model time)")
    for i, sample in enumerate(report.model_time):
        cells = []
        for _, results in runs:
            r = results[i]
            measured = r.turn_taking or r.interruption or r.pause
            latency = r.turn_taking.latency_s if r.turn_taking else r.interruption.response_latency_s if r.interruption else None
            stop = r.interruption.stop_latency_s if r.interruption else None
            cells += ["yes" if measured and measured.take_over else "no",
                      _format(latency, "latency_s", None), _format(stop, "stop_latency_s", None)]
        speech = ", ".join(f"{s.start_s:.2f}-{s.end_s:.2f}" for s in sample.agent_speech[:4])
        more = f" (+{len(sample.agent_speech) - 4})" if len(sample.agent_speech) > 4 else ""
        table.add_row(sample.name, *cells, (speech or "-") + more)
    return table


def _format(value: Any, key: str, samples: int | None) -> str:
    if value is None:
        return "-"
    if key == "talking_at_barge_in":
        return f"{value}/{samples}"
    return f"{value:.3f}"


def markdown_compute(report: ComputeReport, command: str) -> str:
    """A dated BENCHMARKS.md entry: command, machine, per-stage table of each batch size, batch sizes, verdicts."""
    lines = [_heading(command), "", _machine_line(report.machine), "",
             f"{report.model}, {report.device}, {report.precision}, context {report.context}.", ""]
    lines += ["| batch | stage | p50 ms | p95 ms | p99 ms | max ms | mean ms |", "|---:|---|---:|---:|---:|---:|---:|"]
    for run in report.runs:
        for stage in STAGES:
            s = run.stages[stage]
            lines.append(f"| {run.batch_size} | {stage} | " + " | ".join(f"{v:.2f}" for v in (s.p50, s.p95, s.p99, s.max, s.mean)) + " |")
    lines += ["", "| " + " | ".join(BATCH_COLUMNS) + " |", "|" + "---:|" * len(BATCH_COLUMNS)]
    lines += ["| " + " | ".join(_batch_cells(run)) + " |" for run in report.runs]
    lines += ["", _compute_summary(report).replace("\n", " "), ""]
    return "\n".join(lines)


def markdown_context(report: ContextReport, command: str) -> str:
    """A dated BENCHMARKS.md entry for `bench context`."""
    return "\n".join([_heading(command), "", _machine_line(report.machine), "", context_line(report), ""])


def markdown_turns(report: TurnsReport, command: str) -> str:
    """A dated BENCHMARKS.md entry: command, machine, per-task figures beside the references."""
    setup = report.setup
    lines = [_heading(command), "", _machine_line(setup["machine"]), "",
             f"model {setup['model']}, persona {setup['persona']}, {setup['device']} {setup['dtype']}, "
             f"suite {setup['suite']}, seed {setup['seed']}; {setup['vad']}.", ""]
    live = summarize(report.live) if report.live is not None else None
    lines += ["| task | metric | model time | live | references |", "|---|---|---:|---:|---|"]
    for task, measured in summarize(report.model_time).items():
        n = measured["samples"]
        for key, label in TASK_METRICS[task]:
            refs = "; ".join(
                f"{name} {_format(ref[key], key, None)}" for name, ref in REFERENCE.get(task, {}).items() if key in ref
            )
            heard = _format(live[task][key], key, n) if live is not None else "not run"
            lines.append(f"| {TASK_TITLES[task]} ({n}) | {label} | {_format(measured[key], key, n)} | {heard} | {refs or '-'} |")
    if report.live is not None:
        lines += ["", _live_line(report.live)]
    lines += ["", f"Model time: no compute, no audio buffering; live: through the real-time loop on a paced virtual "
              f"device. Method: {METHOD}.", ""]
    return "\n".join(lines)


def _heading(command: str) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"### {when} · `{command}`"


def _machine_line(machine: dict[str, Any]) -> str:
    gpu = f", GPU {machine['gpu']} ({machine['gpu_memory_gib']} GiB)" if "gpu" in machine else ", no GPU used"
    return (
        f"Machine: {machine['cpu']} ({machine['cpu_cores']} cores), {machine['ram_gib']} GiB RAM{gpu}; "
        f"torch {machine['torch']} on {machine['torch_threads']} threads, Python {machine['python']}; "
        f"load average {machine['load_average_1min']} at the start."
    )


def append_entry(path: Path, entry: str) -> None:
    """Append an entry at the end of a markdown file (created with a title if missing)."""
    path = Path(path)
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    with replacing(path) as tmp:
        tmp.write_text(text.rstrip("\n") + "\n\n" + entry.rstrip("\n") + "\n")
