"""Where the embedded data sets live: one rule for every demo set.

``root`` when given, else ``$CROSSFORMER_DATA_DIR/<name>``, else the repository's ``data/<name>`` (found relative to
the package source: an editable install or a clone).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_DIR_ENV", "embedded_dir"]

#: Points at a data root holding the embedded sets (the layout of the repository's ``data/``).
DATA_DIR_ENV = "CROSSFORMER_DATA_DIR"

# <repo>/src/crossformer_vision/data/embedded.py -> <repo>/data
_REPO_DATA_DIR = Path(__file__).resolve().parents[3] / "data"


def embedded_dir(name: str, root: str | os.PathLike | None, marker: str, layout: str, rebuild: str) -> Path:
    """The folder of embedded data set ``name``, checked by the presence of its file ``marker`` (``""``: the folder).

    Raises:
        FileNotFoundError: One message naming where it looked (and why there), the expected ``layout`` and the
            ``rebuild`` command.
    """
    if root is not None:
        path, origin = Path(root), "the root argument"
    elif os.environ.get(DATA_DIR_ENV):
        path, origin = Path(os.environ[DATA_DIR_ENV]) / name, f"${DATA_DIR_ENV}"
    else:
        path, origin = _REPO_DATA_DIR / name, "the repository default"
    if not (path / marker).exists():
        raise FileNotFoundError(
            f"{name} data not found in {path} (from {origin}; expected {layout}); it ships in the repository's "
            f"data/{name}/ and is found from an editable (pip install -e) or cloned install; point ${DATA_DIR_ENV} "
            f"at a folder holding {name}/, pass root=..., or rebuild it with: {rebuild}"
        )
    return path
