"""``crossformer flops``: whole-model parameters and GFLOPs against the official README (meta device, no weights)."""

from __future__ import annotations

import pytest

from crossformer_vision.models.complexity import model_complexity

# rows the official rule reproduces within 1 % (docs/detection.md lists the others with the reason)
ROWS = ["retinanet_crossformer_s", "maskrcnn_crossformer_b", "upernet_crossformer_s", "cascade_crossformer_s"]


@pytest.mark.parametrize("name", ROWS)
def test_published_rows(name):
    r = model_complexity(name)
    assert round(r["params"] / 1e6, 1) == r["published_params_M"]
    tolerance = 0.014 if name.startswith("cascade") else 0.01  # the 3x rows sit ~10 G under the 1x ones
    assert abs(r["gflops"] / r["published_gflops"] - 1) < tolerance


def test_classifier_and_shape():
    r = model_complexity("crossformer_s")
    assert r["shape"] == [224, 224] and abs(r["gflops"] - 4.9) < 0.05
    assert model_complexity("retinanet_crossformer_s", (640, 640))["shape"] == [640, 640]
