"""Relevance maps (crossformer_vision.explain): group placement by hand, the row-vector propagation against dense
matrices, the ViT case against the paper's formula, the recording hook, and the CLI's JSON."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F

import crossformer_vision.models  # noqa: F401  (registers the models)
from crossformer_vision.data.fashion_mnist import CLASS_NAMES
from crossformer_vision.explain import METHODS, dense_from_groups, explain, layout_token_index, trace
from crossformer_vision.explain.methods import _relevance_rule, propagate
from crossformer_vision.explain.propagation import Spread, apply_groups, window_token_index
from crossformer_vision.layers import plan_group_layout

TINY = dict(embed_dim=16, depths=[2, 2, 1, 1], num_heads=[1, 1, 1, 1])


def _tiny(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("crossformer_t", num_classes=10, **{**TINY, **kwargs}).eval()


def test_sda_lda_and_padding_placement_by_hand():
    sda = layout_token_index(plan_group_layout(4, 4, 2, 2, False, "fixed_group"))
    assert sda.tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    # LDA, G=2, I=2: one 4x4 region; a group is the tokens with the same offset modulo 2 (members 2 apart)
    lda = layout_token_index(plan_group_layout(4, 4, 2, 2, True, "fixed_group"))
    assert lda.tolist() == [[0, 2, 8, 10], [1, 3, 9, 11], [4, 6, 12, 14], [5, 7, 13, 15]]
    # 5x5 map, SDA G=2: padded to 6x6, 9 groups; padding is -1
    pad = layout_token_index(plan_group_layout(5, 5, 2, 1, False, "fixed_group"))
    assert pad.shape == (9, 4)
    assert pad[2].tolist() == [4, -1, 9, -1] and pad[8].tolist() == [24, -1, -1, -1]
    # Swin: 4x4 map, window 2, shift 1: the roll brings token (1, 1) to the top-left corner
    win = window_token_index(4, 4, (2, 2), (1, 1))
    assert win[0].tolist() == [5, 6, 9, 10] and win[3].tolist() == [15, 12, 3, 0]


def test_group_matrices_scatter_to_the_dense_matrix():
    index = layout_token_index(plan_group_layout(5, 5, 2, 2, True, "fixed_group"))  # LDA with padding
    mats = torch.rand(2, *index.shape, index.shape[1])
    dense = dense_from_groups(index, mats, 25)
    v = torch.rand(2, 25)
    torch.testing.assert_close(apply_groups(v, index, mats), torch.einsum("bi,bij->bj", v, dense))
    g, i, j = 3, 1, 2
    assert dense[0, index[g, i], index[g, j]] == mats[0, g, i, j]


def test_recorded_attention_is_the_attention_the_block_computes():
    """The placed group maps, applied to the value vectors in token order, give the block's attention output
    (SDA, LDA, and a padded map)."""
    model = _tiny(group_size=[2, 2, 2, 1], crs_interval=[2, 1, 1, 1])
    x = torch.randn(1, 3, 40, 40)  # stage 1: 10 x 10 tokens, padded for both SDA (G=2) and LDA (G*I=4)
    tr = trace(model, x)
    with torch.no_grad():
        torch.testing.assert_close(tr.logits, model(x), atol=1e-5, rtol=1e-5)
        tokens = model.patch_embed(x)
        for b, block in enumerate(model.layers[0].blocks):
            blk = tr.stages[0].blocks[b]
            attn, layout = block.attn, block.layout(10, 10)
            assert (blk.index == layout_token_index(layout)).all()
            v = F.linear(block.norm1(tokens), attn.qkv.weight, attn.qkv.bias)[..., 32:].reshape(1, 100, 16)
            dense = dense_from_groups(blk.index, blk.attn[:, :, 0], 100)  # one head
            expected = attn.proj(torch.bmm(dense, v)).reshape(1, 10, 10, 16)
            torch.testing.assert_close(attn(tokens, layout, norm=block.norm1), expected, atol=1e-5, rtol=1e-4)
            tokens = block(tokens)


def _dense_relevance(tr, seed: torch.Tensor) -> torch.Tensor:
    """The ICCV 2021 rule with dense N x N matrices per stage and dense merge matrices between stages."""
    B = seed.shape[0]
    v = seed
    for s in reversed(range(len(tr.stages))):
        stage = tr.stages[s]
        n = stage.num_tokens
        R = torch.eye(n).expand(B, n, n)
        for blk in stage.blocks:
            cam = (blk.grad * blk.attn).clamp(min=0).mean(2)
            R = R + dense_from_groups(blk.index, cam, n) @ R
        v = torch.einsum("bi,bij->bj", v, R)
        grid = v[:, stage.prefix :].reshape(B, *stage.size)
        if s == 0:
            return F.interpolate(grid[:, None], size=tr.image_size, mode="bilinear", align_corners=False)[:, 0]
        prev = tr.stages[s - 1].size
        basis = torch.eye(n).reshape(n, *stage.size)
        merge = stage.reads(basis, prev).reshape(n, -1)  # [tokens here, tokens of the previous stage]
        v = v @ merge


@pytest.mark.parametrize("size,group", [(32, [8, 4, 2, 1]), (40, [2, 2, 2, 1])], ids=["one-group", "sda-lda-pad"])
def test_row_vector_relevance_equals_the_dense_rule(size, group):
    """One group per block (plain attention) and SDA / LDA / padded layouts: the linear-memory propagation gives
    exactly the dense R <- R + Ā R composed through the merges."""
    model = _tiny(group_size=group, crs_interval=[2, 1, 1, 1])
    x = torch.randn(2, 3, size, size)
    tr = trace(model, x)
    blocks = list(tr.blocks())
    score = tr.logits[:, 3].sum()
    for blk, g in zip(blocks, torch.autograd.grad(score, [b.attn for b in blocks])):
        blk.grad, blk.attn = g, blk.attn.detach()
    with torch.no_grad():
        seed = tr.seed()
        got = propagate(tr, seed, _relevance_rule)
        if size == 32:
            assert all(b.index.shape[0] == 1 for b in blocks)  # every block is one group
        torch.testing.assert_close(got, _dense_relevance(tr, seed), atol=1e-6, rtol=1e-5)
        maps = explain(model, x, 3)
        identity = propagate(tr, seed, lambda s, b, blk, v: v)
        torch.testing.assert_close(maps, (got - identity).clamp(min=0), atol=1e-7, rtol=1e-4)


def test_vit_relevance_is_the_papers_cls_map():
    torch.manual_seed(0)
    vit = timm.create_model("deit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=3).eval()
    x = torch.randn(2, 3, 32, 32)
    tr = trace(vit, x)
    attns = [b.source for b in tr.blocks()]
    grads = torch.autograd.grad(tr.logits[:, 1].sum(), attns)
    expected = []
    for i in range(2):  # the ICCV 2021 ViT code: R = I; R += cam @ R per block; map = R[0, 1:]
        R = torch.eye(17)
        for a, g in zip(attns, grads):
            R = R + (g[i] * a[i]).clamp(min=0).mean(0) @ R
        expected.append(R[0, 1:].reshape(4, 4))
    expected = F.interpolate(torch.stack(expected)[:, None].detach(), size=(32, 32), mode="bilinear")[:, 0]
    torch.testing.assert_close(explain(vit, x, 1), expected, atol=1e-7, rtol=1e-5)


def test_spread_conserves_relevance_and_reads_the_kernels():
    merge = Spread([(2, 0, 0.5), (4, 1, 0.5)], 2)
    v = torch.zeros(1, 3, 3)
    v[0, 1, 1] = 1.0
    out = merge(v, (7, 7))  # odd input: the merge read 6 x 6 of it
    assert out.sum().item() == pytest.approx(1.0)
    assert out[0, 2, 2].item() == pytest.approx(0.5 / 4 + 0.5 / 16)  # inside both kernels
    assert out[0, 1, 1].item() == pytest.approx(0.5 / 16) and out[0, 6].abs().sum() == 0


@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_crossformerpp_and_swin(method):
    torch.manual_seed(0)
    pp = timm.create_model(
        "crossformerpp_s", num_classes=10, embed_dim=16, depths=[1, 1, 3, 1], num_heads=[1, 1, 1, 1]
    ).eval()
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224",
        num_classes=10,
        img_size=64,
        embed_dim=16,
        depths=(1, 1, 2, 1),
        num_heads=(1, 1, 1, 1),
        window_size=4,
    ).eval()
    for model, size in ((pp, 48), (swin, 64)):
        maps = explain(model, torch.randn(2, 3, size, size), [0, 1], method)
        assert maps.shape == (2, size, size) and torch.isfinite(maps).all() and (maps >= 0).all()


def test_recording_is_off_by_default_and_restored():
    model = _tiny()
    attn = model.layers[0].blocks[0].attn
    explain(model, torch.randn(1, 3, 32, 32))
    assert attn.attention_records is None and "attention_records" not in vars(attn)


def test_cli_json_keys(tmp_path):
    from PIL import Image

    from crossformer_vision.cli.main import main
    from train_utils import tiny_classifier_file

    path = tmp_path / "tiny.safetensors"
    tiny_classifier_file(path, classes=CLASS_NAMES)
    out = tmp_path / "out"
    image = tmp_path / "img.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(image)
    assert main(["explain", str(image), "--checkpoint", str(path), "--output-dir", str(out), "--json"]) == 0
    listing = json.loads((out / "explain.json").read_text())
    assert set(listing) == {"checkpoint", "task", "methods", "images"} and listing["task"] == "classification"
    row = listing["images"][0]
    assert set(row) == {"image", "target", "top", "png", "maps"} and (out / row["png"]).is_file()
    assert all((out / f).is_file() for f in row["maps"].values())

    args = ["explain", "eval", "--checkpoint", str(path), "--limit", "10", "--scenes", "2"]
    assert main([*args, "--method", "relevance,random", "--output-dir", str(out), "--json"]) == 0
    result = json.loads((out / "explain_eval.json").read_text())
    for key in ("methods", "top1", "images", "scenes", "pairs", "pairs_top1", "fractions", "fill", "png"):
        assert key in result
    assert set(result["seconds_per_image"]) == {"relevance", "random"}
    assert set(result["methods"]) == {"relevance", "random"}
    metrics = {"positive_auc", "negative_auc", "deletion_auc", "insertion_auc", "pointing", "pointing_top1", "energy"}
    metrics.add("curves")
    assert set(result["methods"]["relevance"]) == metrics
    assert (out / "explain_eval.png").is_file()


def test_multilabel_wrapper_explains_its_backbone():
    from crossformer_vision.tasks.multilabel.model import MultiLabelNet

    torch.manual_seed(0)
    backbone = timm.create_model("crossformer_t", num_classes=0, **TINY)
    net = MultiLabelNet(backbone, num_classes=10, head="csra").eval()
    x = torch.randn(2, 3, 64, 64)
    tr = trace(net, x)
    with torch.no_grad():
        torch.testing.assert_close(tr.logits, net(x), atol=1e-5, rtol=1e-5)
    for method in ("relevance", "relevance_head", "rollout", "attention", "gradcam"):
        maps = explain(net, x, [2, 7], method)
        assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all()
    # relevance_head's seed: the positive part of CSRA's per-token split of the target's logit, normalised
    shares = tr.logit_shares()
    torch.testing.assert_close(shares.sum(2), tr.logits, atol=1e-5, rtol=1e-5)
    seed = tr.seed(torch.tensor([2, 7]))
    expected = shares[[0, 1], [2, 7]].detach().clamp(min=0)
    torch.testing.assert_close(seed, expected / expected.sum(1, keepdim=True).clamp(min=1e-12))  # all <= 0: zero


def test_pointing_game_and_energy_by_hand():
    from crossformer_vision.explain.faithfulness import localisation_scores

    maps = torch.zeros(3, 10, 10)
    maps[0, 3, 4] = 1.0  # the maximum at x=4, y=3: inside the box x 2..5, y 1..3
    maps[1, 8, 8] = 1.0  # outside it
    maps[2, 2, 2], maps[2, 7, 7] = 3.0, 1.0  # 3 of the mass of 4 inside
    box = torch.tensor([[2.0, 1.0, 6.0, 4.0]])  # xyxy, the pixels x 2..5, y 1..3
    hits, energy = localisation_scores(maps, [box, box, box], torch.Generator().manual_seed(0))
    assert hits.tolist() == [1.0, 0.0, 1.0]
    assert energy.tolist() == pytest.approx([1.0, 0.0, 0.75])


class _Scenes:
    """Two 8 x 8 multi-label scenes with known items (``DemoScenes``' interface)."""

    images = torch.zeros(2, 8, 8, dtype=torch.uint8).numpy()
    targets = torch.tensor([[1, 0, 1], [0, 1, 0]]).numpy()
    items = {0: [(0, (1, 1, 2, 3)), (2, (5, 4, 3, 4)), (0, (6, 0, 2, 2))], 1: [(1, (0, 0, 8, 8))]}

    def boxes_of(self, i):
        return self.items[i]


def test_multilabel_pairs_boxes_and_topk_correctness_by_hand():
    from crossformer_vision.explain.evaluate import _multilabel_pairs
    from crossformer_vision.explain.faithfulness import perturbation_curves

    dcfg = {"input_size": (3, 16, 16), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    pairs, owner, x, targets = _multilabel_pairs(_Scenes(), dcfg, None)
    assert [p[1] for p in pairs] == [0, 2, 1] and owner == [0, 0, 1]  # one pair per present class
    assert x.shape == (2, 3, 16, 16) and torch.allclose(x, torch.full_like(x, -1.0))  # black, resized, normalised
    # xywh at 8 px -> xyxy at 16 px, both class-0 items in one pair
    assert pairs[0][2].tolist() == [[2.0, 2.0, 6.0, 8.0], [12.0, 0.0, 16.0, 4.0]]
    assert pairs[1][2].tolist() == [[10.0, 8.0, 16.0, 16.0]]
    assert targets.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]

    class Fixed(torch.nn.Module):  # logits that ignore the image: class 0 highest, then 2, then 1
        def forward(self, images):
            return torch.tensor([[2.0, -1.0, 1.0]]).expand(len(images), -1)

    images = torch.stack([p[0] for p in pairs])
    classes, k = torch.tensor([0, 2, 1]), torch.tensor([2, 2, 1])
    curves = perturbation_curves(Fixed(), images, None, classes, torch.rand(3, 16, 16), torch.Generator(), topk=k)
    # class 0 ranks first, class 2 second (both within k=2); class 1 ranks third (not within k=1)
    assert curves["positive_correct"][:, 0].tolist() == [1.0, 1.0, 0.0]
    expected = torch.sigmoid(torch.tensor([2.0, 1.0, -1.0])).tolist()
    assert curves["positive_prob"][:, 0].tolist() == pytest.approx(expected)


def test_plain_multilabel_head_splits_its_logit_over_the_tokens():
    from crossformer_vision.tasks.multilabel.model import MultiLabelNet

    torch.manual_seed(0)
    vit = dict(img_size=32, patch_size=8, depth=2, embed_dim=16, num_heads=2)
    for backbone, size in (
        (timm.create_model("crossformer_t", num_classes=0, **TINY), 64),
        (timm.create_model("deit_tiny_patch16_224", num_classes=0, **vit), 32),
    ):
        net = MultiLabelNet(backbone, num_classes=10, head="avg").eval()
        x = torch.randn(2, 3, size, size)
        tr = trace(net, x)
        # the plain head's logit is the sum of the recorded tokens' shares w_c . f_i / N plus the bias
        shares = tr.logit_shares()
        assert shares.shape == (2, 10, tr.stages[-1].num_tokens - tr.stages[-1].prefix)
        torch.testing.assert_close(shares.sum(2) + net.head.fc.bias, tr.logits, atol=1e-5, rtol=1e-5)
        assert tr.seed(torch.tensor([1, 2])).shape[1] == tr.stages[-1].num_tokens
        maps = explain(net, x, [1, 2], "relevance_head")
        assert maps.shape == (2, size, size) and torch.isfinite(maps).all()


def test_cli_eval_on_a_multilabel_run(tmp_path, monkeypatch):
    import copy

    from crossformer_vision.cli.main import main
    from crossformer_vision.engine.loading import model_metadata, save_model
    from crossformer_vision.tasks.multilabel.config import DEFAULTS, PATH_KEYS
    from crossformer_vision.tasks.multilabel.model import build_multilabel, head_args

    monkeypatch.setenv("CROSSFORMER_CACHE_DIR", str(tmp_path / "cache"))
    cfg = copy.deepcopy(DEFAULTS)
    kwargs = dict(
        embed_dim=16,
        depths=[1, 1],
        num_heads=[1, 2],
        group_size=[4, 4],
        crs_interval=[2, 1],
        merge_kernel_sizes=[[2, 4]],
    )
    cfg["model"].update(name="crossformer_t", head="avg", kwargs=kwargs)
    cfg["data"].update(dataset="demo", img_size=48, demo_size=48, demo_val=3, demo_side=[12, 20], mean=[0.2] * 3)
    cfg["data"]["std"] = [0.3] * 3
    torch.manual_seed(0)
    model = build_multilabel(cfg, 10).eval()
    dcfg = {"input_size": [3, 48, 48], "crop_pct": 1.0, "crop_mode": "squash", "interpolation": "bilinear"}
    meta = model_metadata("multilabel", "crossformer_t", {"backbone": kwargs, "head": head_args(cfg)}, CLASS_NAMES, cfg,
                          path_keys=PATH_KEYS, data_config={**dcfg, "mean": [0.2] * 3, "std": [0.3] * 3})  # fmt: skip
    path = tmp_path / "ml.safetensors"
    save_model(model, path, meta)
    out = tmp_path / "eval"
    args = ["explain", "eval", "--checkpoint", str(path), "--limit", "2", "--method", "relevance_head,random"]
    assert main([*args, "--output-dir", str(out), "--json"]) == 0
    result = json.loads((out / "explain_eval.json").read_text())
    assert result["task"] == "multilabel" and result["scenes"] == 2 and result["pairs"] >= 4
    for key in ("mAP", "pairs_topk", "fractions", "fill", "png", "seconds_per_image", "checkpoint", "model"):
        assert key in result
    metrics = {"positive_auc", "negative_auc", "deletion_auc", "insertion_auc", "pointing", "pointing_topk", "energy"}
    assert set(result["methods"]) == {"relevance_head", "random"}
    assert set(result["methods"]["random"]) == metrics | {"curves"}
    row = result["methods"]["random"]
    assert all(0 <= row[k] <= 1 for k in metrics - {"pointing_topk"})
    assert (row["pointing_topk"] is None) == (result["pairs_topk"] == 0)  # no pair in the model's top-k: no value
    assert (out / "explain_eval.png").is_file()
    assert main([*args, "--output-dir", str(out)]) == 0  # the table
