"""The error histogram of one layer's weights, as data (tested) and as an interactive widget (notebook).

    h = error_histogram(w, bits=4, group_size=128)     # pure: counts, edges and error statistics
    plot_error_histogram(h)                             # a static plot of it
    error_histogram_widget(model)                       # sliders for bits and group size, a layer dropdown

The widget only calls ``error_histogram`` and ``plot_error_histogram``; everything it shows is what
those return, so testing the pure function tests the widget's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .affine import broadcast_scale, dequantize, quantize


@dataclass(frozen=True)
class ErrorHistogram:
    """Histogram of w - w_hat for one quantizer setting, plus summary statistics."""

    bits: int
    group_size: int | None  # None: per channel
    counts: list[int]
    edges: list[float]  # len(counts) + 1 bin edges
    mse: float
    max_abs: float
    rel_fro: float
    half_step: float  # largest s/2 over the groups: the bound on |w - w_hat| for round-to-nearest

    @property
    def numel(self) -> int:
        return sum(self.counts)

    def stats(self) -> dict:
        """One row for print_table."""
        return {"bits": self.bits, "group size": self.group_size or "channel", "mse": self.mse,
                "max |err|": self.max_abs, "max s/2": self.half_step, "rel error": self.rel_fro}


def error_histogram(w: torch.Tensor, bits: int, group_size: int | None = 128, *, bins: int = 41,
                    symmetric: bool = True, limit: float | None = None) -> ErrorHistogram:
    """Quantize a 2-D weight (per group of `group_size` inputs, or per channel if None), histogram the error.

    The bins span [-limit, limit]; the default limit is the largest s/2 of the layer, so round-to-nearest
    errors always fall inside (|w - w_hat| <= s/2 for a value inside the grid's range)."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise TypeError("error_histogram needs a 2-D (out_features, in_features) weight tensor.")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}.")
    w32 = w.detach().float()
    kw = {"granularity": "channel"} if group_size is None else {"granularity": "group", "group_size": group_size}
    qt = quantize(w32, bits, symmetric=symmetric, **kw)
    err = w32 - dequantize(qt).float()
    half_step = (broadcast_scale(qt).max() / 2).item()
    lim = limit if limit is not None else half_step
    if not lim > 0:
        lim = max(err.abs().max().item(), 1e-12)
    flat = err.flatten().clamp(-lim, lim)  # out-of-range errors (none for RTN) land in the end bins
    counts = torch.histc(flat, bins=bins, min=-lim, max=lim)
    edges = torch.linspace(-lim, lim, bins + 1)
    norm = torch.linalg.vector_norm(w32).item()
    return ErrorHistogram(bits=bits, group_size=group_size, counts=[int(c) for c in counts.tolist()],
                          edges=edges.tolist(), mse=err.pow(2).mean().item(), max_abs=err.abs().max().item(),
                          rel_fro=torch.linalg.vector_norm(err).item() / norm if norm > 0 else 0.0,
                          half_step=half_step)


def plot_error_histogram(h: ErrorHistogram, ax=None, *, title: str | None = None):
    """Bar plot of an ErrorHistogram with the +-s/2 bound marked; returns the axes."""
    from ..core.plotting import PALETTE, new_axes

    if ax is None:
        _, ax = new_axes()
    width = h.edges[1] - h.edges[0]
    ax.bar(h.edges[:-1], h.counts, width=width, align="edge", color=PALETTE[0], alpha=0.8)
    for x in (-h.half_step, h.half_step):
        ax.axvline(x, color=PALETTE[3], ls="--", lw=1)
    group = "per channel" if h.group_size is None else f"group {h.group_size}"
    ax.set(xlabel="w - w_hat", ylabel="weights",
           title=title or f"{h.bits}-bit, {group}: rel error {h.rel_fro:.3g}, max |err| {h.max_abs:.3g}")
    return ax


def common_group_sizes(weights: dict[str, torch.Tensor], candidates=(16, 32, 64, 128, 256)) -> list[int]:
    """The candidate group sizes that divide every layer's in_features."""
    return [g for g in candidates if all(w.shape[1] % g == 0 for w in weights.values())]


def histogram_png(h: ErrorHistogram, title: str | None = None) -> bytes:
    """The plot of `h` as PNG bytes, drawn on a standalone Figure (no pyplot, so nothing is displayed)."""
    import io

    from matplotlib.figure import Figure

    from ..core.plotting import STYLE, use_style

    use_style()
    fig = Figure(figsize=STYLE["figure.figsize"])
    plot_error_histogram(h, fig.subplots(), title=title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=STYLE["figure.dpi"])
    return buf.getvalue()


def error_histogram_widget(model_or_weights, *, bits: int = 4, group_size: int | None = 128, bins: int = 41):
    """A layer dropdown, a bits slider (2-8) and a group-size slider ("channel" = one scale per row) above the
    error histogram of the chosen layer and a line of statistics. Returns an ipywidgets.VBox.

    The plot is a PNG in an ``Image`` widget, redrawn by observers: no ``Output`` widget, no ``clear_output``.
    Display it as the last expression of a cell (live kernels only: widgets don't render in static views)."""
    import ipywidgets as widgets

    from ..core.tables import fmt
    from .analysis import model_weights

    weights = model_weights(model_or_weights) if isinstance(model_or_weights, torch.nn.Module) else dict(model_or_weights)
    if not weights:
        raise ValueError("No linear layers to show.")
    sizes: list = common_group_sizes(weights) + ["channel"]
    layer = widgets.Dropdown(options=list(weights), description="layer")
    bits_slider = widgets.IntSlider(value=bits, min=2, max=8, step=1, description="bits")
    group = widgets.SelectionSlider(options=sizes, value=group_size if group_size in sizes else "channel",
                                    description="group size")
    image = widgets.Image(format="png")
    stats = widgets.HTML()

    def refresh(*_) -> None:
        g = None if group.value == "channel" else group.value
        h = error_histogram(weights[layer.value], bits_slider.value, g, bins=bins)
        image.value = histogram_png(h, title=f"{layer.value}\n{h.bits}-bit, group {group.value}")
        stats.value = " &nbsp; ".join(f"{k}: <b>{fmt(v)}</b>" for k, v in h.stats().items())

    for control in (layer, bits_slider, group):
        control.observe(refresh, names="value")
    refresh()
    return widgets.VBox([layer, bits_slider, group, stats, image])
