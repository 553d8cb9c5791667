"""Plots of runs, traces and schedules (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["heatmap"]


def heatmap(values: np.ndarray, path: Path, *, title: str, xlabel: str, ylabel: str,
            colorbar: str, annotate: bool = False, cell_width: float = 0.25) -> None:
    """Rows x columns image (NaN cells blank), integer ticks, optional value labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(values, dtype=float)
    n_rows, n_cols = values.shape
    fig, ax = plt.subplots(figsize=(min(24, max(6, 2 + n_cols * cell_width)),
                                    1.4 + n_rows * 0.4))
    im = ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest")
    if annotate:
        for r, c in zip(*np.nonzero(~np.isnan(values))):
            ax.text(c, r, int(values[r, c]), ha="center", va="center", fontsize=7,
                    color="white")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_yticks(range(n_rows))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=colorbar)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
