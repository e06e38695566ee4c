"""From a float model's files to a dpq checkpoint on disk, layer by layer, resumable.

    source (dpq.models.source) -> driver (dpq.models.driver) -> writer (dpq.io.writer)
                                                              -> run state (dpq.io.resume)
    all inside a claimed partial directory that is published at the end (dpq.io.outdir)

`quantize_to_disk` is what `dpq quantize` runs. `save_quantized` writes a model already quantized
in memory through the same writer, so both give the same bytes for the same inputs.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import dpq
from dpq.config import FORMAT_VERSION, QuantConfig
from dpq.io import outdir, resume
from dpq.io.shards import DEFAULT_MAX_SHARD_SIZE, parse_size
from dpq.io.writer import CheckpointWriter
from dpq.models.activations import ActivationStore
from dpq.models.checks import check_model
from dpq.models.driver import Resume, quantize_model
from dpq.models.phases import PhaseClock
from dpq.models.summary import QuantSummary


@dataclass
class QuantResult:
    """What `dpq.quantize` / `dpq.quantize_to_disk` return and `dpq.save` takes.

    model/tokenizer: the quantized model in memory (None after quantize_to_disk, which streams);
    path: the checkpoint directory once written; calibration: source, sizes, seed and the sha256
    fingerprint of the exact calibration tokens; source_model: what the float model was loaded from.
    """

    config: QuantConfig
    summary: QuantSummary
    calibration: dict
    model: object = None
    tokenizer: object = None
    path: Path | None = None
    source_model: str | None = None


def calibration_info(config: QuantConfig, calib: torch.Tensor) -> dict:
    from dpq.io.data import fingerprint  # noqa: PLC0415

    return {"source": config.calib.source, "samples": int(calib.shape[0]), "seq_len": int(calib.shape[1]),
            "seed": config.calib.seed, "fingerprint": fingerprint(calib)}


def _fingerprint(source, config: QuantConfig, calibration: dict, batch_size: int, device: str,
                 max_bytes: int) -> str:
    return resume.fingerprint({
        "dpq": dpq.__version__, "format": FORMAT_VERSION, "settings": config.to_dict(),
        "calibration": calibration["fingerprint"], "batch_size": batch_size, "device": torch.device(device).type,
        "source": source.describe(), "float_config": source.model.config.to_dict(), "max_shard_bytes": max_bytes,
    })


class _Sink:
    """The driver's sink: write each finished layer, keep the next layer's inputs, record progress."""

    def __init__(self, writer: CheckpointWriter, root: Path, state: dict, layers: int) -> None:
        self.writer, self.root, self.state, self.layers = writer, root, state, layers

    def layer_done(self, i, prefix, layer, hidden, summary) -> None:
        self.writer.write_layer(i, layer)
        keep = None
        if hidden is not None and i + 1 < self.layers:
            keep = resume.save_inputs(self.root, i + 1, hidden)
        self.state.update(units_done=i + 2, inputs=keep, rows=summary.rows())
        resume.write_state(self.root, self.state)
        resume.drop_inputs_except(self.root, keep)


def _clear(root: Path, claim) -> None:
    import shutil  # noqa: PLC0415

    for p in root.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    claim.checkpoint.mkdir()


def _start_state(claim, fp: str, restart: bool, out: Path) -> dict:
    """The run state to continue from (units_done 0 for a fresh start); refuses another run's leftovers.

    A partial directory with no state (an attempt that stopped before its first layer, or the
    remains of a finished run) is cleared; one with the state of other settings is refused unless restart.
    """
    state = resume.read_state(claim.root) if claim.found and not restart else None
    if claim.found and (restart or state is None):
        _clear(claim.root, claim)
        state = None
    if state is not None and state["fingerprint"] != fp:
        raise outdir.OutputError(
            f"{claim.root} holds an interrupted run for --out {out} with other settings, calibration data or "
            "source: run that command again to resume it, or pass --restart to discard it and start over")
    if state is not None and state.get("done") and not _holds(claim.checkpoint, state["manifest_sha256"]):
        # a run that died while replacing --out: the new checkpoint is at --out if it matches, else start over
        if _holds(out, state["manifest_sha256"]):
            state["published"] = True
        else:
            _clear(claim.root, claim)
            state = None
    return state or {"fingerprint": fp, "units_done": 0, "inputs": None, "rows": {}}


def _holds(directory: Path, manifest_sha256: str) -> bool:
    from dpq.io.shards import _sha256  # noqa: PLC0415
    from dpq.io.writer import MANIFEST  # noqa: PLC0415

    f = Path(directory) / MANIFEST
    return f.is_file() and _sha256(f) == manifest_sha256


def quantize_to_disk(model: str | None, out: str, config: QuantConfig | None = None, *, dtype="auto",
                     device: str = "cpu", batch_size: int = 8, calib: torch.Tensor | None = None,
                     max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE, overwrite: bool = False,
                     restart: bool = False, offload_dir: str | None = None, progress: bool = True) -> QuantResult:
    """Quantize the float model MODEL (directory, .gguf, hub name or bundled name) into the checkpoint `out`.

    A safetensors directory is streamed one decoder layer at a time; other sources are loaded into
    memory first. An interrupted run (crash, Ctrl-C, SIGKILL) resumes when the same call is made again
    and writes the same bytes as an uninterrupted one; `restart` discards it instead.
    """
    from dpq.models.loading import resolve  # noqa: PLC0415
    from dpq.models.source import open_source, resolve_dtype  # noqa: PLC0415

    config = _check_config(config)
    _check_batch_size(batch_size)
    max_bytes = parse_size(max_shard_size)
    resolve_dtype(dtype)
    out = outdir.check_output(out, overwrite, protected=_local_paths(resolve(model)))
    claim = outdir.claim(out)  # before any expensive work: a second run, or an unwritable place, stops here
    keep = False
    try:
        source = open_source(model, dtype)
        check_model(source.model, config, config.calib.seq_len if calib is None else int(calib.shape[-1]))
        calib = _calibration(source.tokenizer, config, calib)
        _check_memory(source, config, calib, offload_dir)
        calibration = calibration_info(config, calib)
        fp = _fingerprint(source, config, calibration, batch_size, device, max_bytes)
        state = _start_state(claim, fp, restart, out)
        keep = True
        if state.get("published"):
            claim.release(remove=True)
            return QuantResult(config, _summary_of(config, state), calibration, path=out,
                               source_model=source.reference)
        if not state.get("done"):
            result = _run(source, config, calib, calibration, claim, state, max_bytes, device, batch_size,
                          offload_dir, progress)
        else:
            result = QuantResult(config, _summary_of(config, state), calibration, source_model=source.reference)
        result.path = outdir.publish(claim, overwrite)
        return result
    except BaseException:
        has_state = (claim.root / resume.STATE).is_file()  # progress, ours or another run's: never removed
        claim.release(remove=not has_state)
        if has_state and keep:
            print(f"dpq: the run stopped; {claim.root} keeps its progress: run the same command again to resume "
                  "(or pass --restart to start over)", file=sys.stderr)
        raise


def _check_memory(source, config: QuantConfig, calib: torch.Tensor, offload_dir) -> None:
    """Refuse, before calibrating, a run whose activations cannot fit in RAM (`dpq.models.memory`)."""
    from dpq.models.memory import check_run_memory  # noqa: PLC0415

    check_run_memory(source.model, source.dtype.itemsize, config, int(calib.numel()), offload_dir)


def _summary_of(config: QuantConfig, state: dict) -> QuantSummary:
    summary = QuantSummary(config.method)
    summary.restore_rows(state.get("rows", {}))
    return summary


def _run(source, config, calib, calibration, claim, state, max_bytes, device, batch_size, offload_dir, progress):
    clock = PhaseClock()
    with clock("load"):
        writer = CheckpointWriter(claim.checkpoint, source.model.config, source.dtype, config, max_bytes,
                                  resume_units=state["units_done"])
    if state["units_done"] == 0:
        with clock("save"):
            writer.write_rest(lambda name: source.read([name])[name])
        state["units_done"] = 1
        resume.write_state(claim.root, state)
    store = ActivationStore(offload_dir)
    layers = len(writer.units) - 1
    start = state["units_done"] - 1
    earlier = None
    if start > 0:
        hidden = resume.load_inputs(claim.root, state["inputs"], store.new_list) if state["inputs"] else None
        earlier = Resume(start, hidden, state["rows"])
    try:
        summary = quantize_model(source.model, calib, config, device=device, batch_size=batch_size,
                                 progress=progress, source=source, sink=_Sink(writer, claim.root, state, layers),
                                 resume=earlier, clock=clock, store=store)
    finally:
        store.close()
    from dpq.io.checkpoint import quant_block  # noqa: PLC0415

    block = quant_block(config, writer.modules, calibration, source.reference, summary.top_token_shares())
    with clock("save"):
        writer.finish(source.model.config, source.tokenizer, source.generation_config(), block)
    from dpq.io.shards import _sha256  # noqa: PLC0415
    from dpq.io.writer import MANIFEST  # noqa: PLC0415

    state.update(done=True, inputs=None, rows=summary.rows(), manifest_sha256=_sha256(claim.checkpoint / MANIFEST))
    resume.write_state(claim.root, state)
    resume.drop_inputs_except(claim.root, None)
    summary.phases = clock.as_dict()
    return QuantResult(config, summary, calibration, source_model=source.reference)


def save_quantized(result: QuantResult, out: str, overwrite: bool = False,
                   max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE) -> Path:
    """Write a model quantized in memory (`dpq.quantize`'s result) as a checkpoint directory."""
    if not isinstance(result, QuantResult) or result.model is None:
        raise TypeError("save takes the result of dpq.quantize(model, tokenizer, config) (a QuantResult with its model)")
    from dpq.io.checkpoint import quant_block  # noqa: PLC0415

    max_bytes = parse_size(max_shard_size)
    protected = (result.source_model,) if result.source_model and Path(result.source_model).exists() else ()
    out = outdir.check_output(out, overwrite, protected=protected)
    model, config = result.model, result.config
    from dpq.models.source import float_dtype  # noqa: PLC0415

    dtype = float_dtype(model)
    claim = outdir.claim(out)
    try:
        if claim.found and resume.read_state(claim.root) is not None:
            raise outdir.OutputError(f"{claim.root} holds an interrupted `dpq quantize` run for {out}: resume it "
                                     "with the same command, or remove that directory")
        if claim.found:
            _clear(claim.root, claim)  # what a dead save left: nothing to resume
        writer = CheckpointWriter(claim.checkpoint, model.config, dtype, config, max_bytes)
        state = model.state_dict()
        for u in range(len(writer.units)):
            writer.write_unit(u, lambda name: state[name])
        block = quant_block(config, writer.modules, result.calibration, result.source_model,
                            result.summary.top_token_shares())
        writer.finish(model.config, result.tokenizer, getattr(model, "generation_config", None), block)
        result.path = outdir.publish(claim, overwrite)
    except BaseException:
        claim.release(remove=not (claim.found and (claim.root / resume.STATE).is_file()))
        raise
    return result.path


def _check_config(config) -> QuantConfig:
    if config is None:
        return QuantConfig.for_method()
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a dpq.QuantConfig, e.g. QuantConfig.for_method('dpq-gar'), "
                        f"not {type(config).__name__} ({config!r:.60})")
    return config


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be a positive integer")


def _calibration(tokenizer, config: QuantConfig, calib):
    if calib is not None:
        return calib
    from dpq.io.data import calibration_batches  # noqa: PLC0415

    c = config.calib
    return calibration_batches(tokenizer, c.source, c.samples, c.seq_len, c.seed, c.holdout)


def _local_paths(origin) -> tuple[str, ...]:
    """The local files or directories a model source reads (an output must not overlap them)."""
    from dpq.models.loading import BUNDLED  # noqa: PLC0415

    if origin.name in BUNDLED:
        return ()
    p = Path(origin.path) / origin.gguf_file if origin.gguf_file else Path(origin.path)
    return (str(p),) if p.exists() else ()


def result_dict(result: QuantResult) -> dict:
    """A JSON-ready view of a result (for benchmarks and --json outputs)."""
    return {"path": str(result.path) if result.path else None, "calibration": result.calibration,
            "summary": dataclasses.asdict(result.summary)}
