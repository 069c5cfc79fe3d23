"""The models and the three task pipelines on a CUDA device (skipped without one; CI has none).

Official fixtures on the GPU in float32 (TF32 off), bf16 autocast, CPU-equal gradients with and without gradient
checkpointing, and tiny classification / segmentation / detection runs through the CLI on ``cuda``, including
exact resume under ``train.deterministic=true``. Run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import json

import pytest
import torch

import crossformer_vision as cf
from conftest import set_fused
from fixtures_official import fixture
from train_utils import TINY_RUN, run_cli, weights

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TOL = 1e-4


@pytest.fixture(autouse=True)
def _no_tf32():
    """Full float32 matmuls and convolutions, so the official fixtures' 1e-4 tolerance applies."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _official_model(name: str, fused: bool = True) -> tuple[torch.nn.Module, dict]:
    fx = fixture(name)
    model = cf.build_from_official(fx["config"], fx["flavour"])
    cf.load_official_state_dict(model, fx["state_dict"])
    set_fused(model, fused)
    return model.cuda().eval(), fx


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "manual"])
@pytest.mark.parametrize("name", ["v1_cls_tiny", "pp_cls_small"])
def test_official_classification_fixture_on_cuda(name, fused):
    model, fx = _official_model(name, fused)
    with torch.inference_mode():
        logits = model(fx["input"].cuda()).cpu()
    assert (logits - fx["output"]).abs().max().item() <= TOL
    assert fx["output"].abs().max() > 1.0


def test_official_dense_backbone_fixture_on_cuda():
    """192x288 input: padded groups in every stage, on the GPU."""
    model, fx = _official_model("det_main_pp_backbone")
    with torch.inference_mode():
        maps = model(fx["input"].cuda())
    for ours, ref in zip(maps, fx["output"]):
        assert (ours.cpu() - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("name", ["v1_cls_tiny", "pp_cls_small"])
def test_bf16_autocast_on_cuda_stays_close_to_float32(name):
    model, fx = _official_model(name)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(fx["input"].cuda()).float().cpu()
    rel = ((logits - fx["output"]).norm() / fx["output"].norm()).item()
    assert rel < 0.03, rel
    assert torch.equal(logits.argmax(-1), fx["output"].argmax(-1))


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "grad-ckpt"])
def test_training_gradients_on_cuda_equal_cpu(checkpointing):
    """One loss.backward of a small CrossFormer++ (padded 4x4 groups, drop path off) on the GPU and on the CPU."""
    torch.manual_seed(0)
    model = cf.CrossFormer(
        img_size=64, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), group_size=(4, 4, 2, 1),
        crs_interval=(4, 2, 1, 1), num_classes=10,
    )  # fmt: skip
    model.set_grad_checkpointing(checkpointing)
    x = torch.randn(4, 3, 72, 56, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([1, 2, 3, 4])
    grads = {}
    for device in ("cpu", "cuda"):
        model.to(device).zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x.to(device)), y.to(device))
        loss.backward()
        grads[device] = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters()}
    for name, g in grads["cpu"].items():
        scale = g.abs().max().item() + 1e-6
        assert (grads["cuda"][name] - g).abs().max().item() <= 1e-4 * scale + 1e-7, name


def test_classification_run_on_cuda_resumes_exactly(tmp_path):
    """Train on the GPU (bf16 autocast, deterministic kernels), stop after 7 steps, resume: same weights as one run."""
    run = [*TINY_RUN, "train.device=cuda", "train.amp=bf16", "train.deterministic=true", "model.drop_path_rate=0.1"]
    full, part = tmp_path / "full", tmp_path / "part"
    run_cli(["train", *run, f"train.output_dir={full}"])
    run_cli(["train", *run, "train.max_steps=7", f"train.output_dir={part}"])
    run_cli(["train", *run, f"train.output_dir={part}", "--resume", str(part)])
    a, b = weights(full), weights(part)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    # the run's batch size and (since the fix) its bf16 autocast: the same kernels as the run's own final evaluation
    ev = json.loads(run_cli(["eval", "--checkpoint", str(full), "--batch-size", "32", "--json"]).stdout)
    assert ev["metrics"]["top1"] == pytest.approx(json.loads((full / "results.json").read_text())["metrics"]["top1"])


def test_segmentation_run_on_cuda(tmp_path):
    from test_seg_train import TINY_SEG

    out = tmp_path / "seg"
    proc = run_cli(["seg", "train", *TINY_SEG, "train.device=cuda", "train.amp=bf16", f"train.output_dir={out}"])
    assert "mIoU" in proc.stdout
    ev = run_cli(["seg", "eval", "--checkpoint", str(out), "--flip", "--json"])
    assert 0 <= json.loads(ev.stdout)["metrics"]["mIoU"] <= 100


def test_detection_run_on_cuda(tmp_path):
    from test_det_train import TINY_DET

    out = tmp_path / "det"
    # deterministic=true: on CUDA RoIAlign's backward has no deterministic kernel; PyTorch warns instead of stopping
    proc = run_cli(["det", "train", *TINY_DET, "train.device=cuda", f"train.output_dir={out}"])
    assert "does not have a deterministic implementation" in proc.stderr
    ev = run_cli(["det", "eval", "--checkpoint", str(out), "--json"])
    metrics = json.loads(ev.stdout)["metrics"]
    assert 0 <= metrics["bbox/AP"] <= 100 and "segm/AP" in metrics
