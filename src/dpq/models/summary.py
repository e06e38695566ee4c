"""What a quantization run reports: one row per quantized Linear, totals, time by phase, memory."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

CONCENTRATED_SHARE = 0.25
"""A Linear whose top 0.1% of calibration tokens carry more than this share of tr(H) is flagged:
its Hessian is set by a few tokens (massive activations, e.g. at position 0). Over 8 x 2048
WikiText-2 tokens SmolLM2-135M's layers 11 and 28 `down_proj` carry 99% and 51%, its next
input 19%; over 8 x 512 no Gemma-3-270M input carries over 2%
(`benchmarks/activation_outliers.py`)."""

PHASES = ("load", "forward", "hessian", "solve", "error", "save")
"""Where a run's time goes (`QuantSummary.phases`): reading weights, the calibration forward passes,
accumulating Hessians, the solvers, the per-Linear error report, writing the checkpoint."""


@dataclass
class LinearReport:
    name: str
    shape: tuple[int, int]
    rel_error: float
    solve_seconds: float
    input_scale: float | None
    top_token_share: float | None = None  # of tr(H), top 0.1% of tokens; None without calibration

    @classmethod
    def from_dict(cls, d: dict) -> "LinearReport":
        return cls(**{**d, "shape": tuple(d["shape"])})


@dataclass
class QuantSummary:
    """What a quantization run did: one row per quantized Linear, totals, time by phase and memory."""

    method: str
    linears: list[LinearReport] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    peak_device_mb: float | None = None
    calib_tokens: int = 0
    data_free: bool = False  # no calibration pass (RTN weights, no static activation scales)
    smoothing: dict = field(default_factory=dict)  # {first Linear of a set: chosen scales}, with smooth on
    refine: dict = field(default_factory=dict)  # {decoder layer: {"loss_before", "loss_after", "seconds"}}
    phases: dict[str, float] = field(default_factory=dict)  # seconds by phase (PHASES), this process only
    resumed_at: int | None = None  # the first layer this process quantized, when it resumed an earlier run
    layers: int = 0

    @property
    def mean_rel_error(self) -> float:
        errs = [r.rel_error for r in self.linears]
        return sum(errs) / len(errs) if errs else float("nan")

    def concentrated(self, threshold: float = CONCENTRATED_SHARE) -> list[LinearReport]:
        """The Linears whose Hessian the top 0.1% of calibration tokens dominate (`concentrated`'s rule)."""
        shares = {r.name: r.top_token_share for r in self.linears if r.top_token_share is not None}
        flagged = concentrated(shares, threshold)
        return [r for r in self.linears if r.name in flagged]

    def top_token_shares(self) -> dict[str, float]:
        """{Linear name: top-0.1%-token share of tr(H)} for every calibrated Linear (stored in checkpoints)."""
        return {r.name: round(r.top_token_share, 4) for r in self.linears if r.top_token_share is not None}

    def rows(self) -> dict:
        """The per-Linear rows and skipped names as JSON-ready data (kept by a resumable run)."""
        return {"linears": [asdict(r) for r in self.linears], "skipped": list(self.skipped)}

    def restore_rows(self, rows: dict) -> None:
        self.linears = [LinearReport.from_dict(r) for r in rows.get("linears", [])]
        self.skipped = list(rows.get("skipped", []))


def concentrated(shares: dict[str, float] | None, threshold: float = CONCENTRATED_SHARE) -> dict[str, float]:
    """The entries of a {Linear name: top-token share} map above `threshold` (`QuantSummary.concentrated`'s rule)."""
    return {name: share for name, share in (shares or {}).items() if share > threshold}
