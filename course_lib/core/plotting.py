"""One matplotlib style for every chapter: readable in class, colour-blind safe."""

from __future__ import annotations

# Okabe-Ito palette: distinguishable with the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]

STYLE = {
    "figure.figsize": (7.0, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 10,
    "legend.frameon": False,
    "lines.linewidth": 2.0,
    "lines.markersize": 5,
    "svg.hashsalt": "course",  # deterministic SVG ids
}


def use_style() -> None:
    """Apply the course style to matplotlib's global settings."""
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams.update(STYLE)
    mpl.rcParams["axes.prop_cycle"] = cycler(color=PALETTE)


def new_axes(ncols: int = 1, nrows: int = 1, **kwargs):
    """A figure in the course style; returns (fig, axes)."""
    import matplotlib.pyplot as plt

    use_style()
    width, height = STYLE["figure.figsize"]
    kwargs.setdefault("figsize", (width * ncols if ncols > 1 else width, height * nrows))
    return plt.subplots(nrows, ncols, **kwargs)
