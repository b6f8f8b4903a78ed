"""DyT video ViT: the original's state-dict layout (query_token, attentive_blocks) and parameter counts of the K400
manifest, the per-frame backbone equal to the image model, the attentive pooling against its formula, the
per-clip FLOPs of the manifest, the MoE adapter, and multi-view evaluation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from dyt.flops import sample_flops
from dyt.main_video import video_param_count
from dyt.models import MODELS, build_model
from dyt.models.video_vision_transformer import VIDEO_MODELS, build_video_model
from dyt.video_engine import clip_flops, complete_clip_flops, evaluate_video, uniform_rate_clip_flops


@pytest.fixture(scope="module")
def vit_b_k400():
    return build_video_model("vit_base_patch16_224_in21k", num_classes=400)


@pytest.fixture(scope="module")
def manifest(shared_dir):
    return json.loads((shared_dir / "reference" / "dyt" / "manifest_dyt_vitb16_video_ffn64_k400.json").read_text())


def test_state_dict_layout_and_counts_match_the_manifest(vit_b_k400, manifest):
    ours = [(k, list(v.shape)) for k, v in vit_b_k400.state_dict().items()]
    assert ours == [(k, list(s)) for k, s in manifest["state_dict"]]
    assert sum(p.numel() for p in vit_b_k400.parameters()) == manifest["num_params"]
    counts = manifest["trainable_params"]
    pooling = sum(p.numel() for n, p in vit_b_k400.named_parameters()
                  if n.startswith(("attentive_blocks.", "query_token")))
    assert pooling == counts["attentive_pool(query_token+attentive_blocks)"] == 2_366_976
    # what the IN21K checkpoint lacks trains: adapters, dispatchers, head and the attentive pooling
    backbone = set(build_model("vit_base_patch16_224_in21k", ffn_num=0, dispatch="none", num_classes=0).state_dict())
    for name, param in vit_b_k400.named_parameters():
        param.requires_grad = name not in backbone
    logged = "as_logged_by_main_video (requires_grad, excluding attentive_blocks and query_token; includes head " \
             "and dispatchers)"
    assert video_param_count(vit_b_k400) == counts[logged] == 1_506_460


def test_every_image_model_has_a_video_version():
    assert set(VIDEO_MODELS) <= set(MODELS)
    for name in set(VIDEO_MODELS) - {"vit_base_patch16_224_in21k"}:  # ViT-B: the manifest test
        image = build_model(name, num_classes=5, ffn_num=4)
        video = build_video_model(name, num_classes=5, ffn_num=4)
        extra = {k for k in video.state_dict() if k.startswith(("attentive_blocks.", "query_token"))}
        assert {k: v.shape for k, v in video.state_dict().items() if k not in extra} == \
            {k: v.shape for k, v in image.state_dict().items()}


def test_clip_flops_reproduce_the_manifest(vit_b_k400, manifest):
    flops = manifest["flops"]
    assert complete_clip_flops(vit_b_k400, 8) == pytest.approx(
        flops["complete_model_per_clip_8x224_GFLOPs(fvcore, attn matmul counted)"], abs=1e-6)
    for key, value in flops["uniform_activation_rate_estimates_per_clip_GFLOPs"].items():
        assert uniform_rate_clip_flops(vit_b_k400, float(key[2:]), 8) == pytest.approx(value, abs=1e-6)


def _tiny(**kwargs):
    torch.manual_seed(0)
    return build_video_model("vit_digits_tiny", num_classes=5, ffn_num=4, img_size=8, **kwargs)


def test_frames_go_through_the_image_model_and_pooling_follows_its_formula():
    video = _tiny().eval()
    for p in video.parameters():  # no zero-initialised tensor hides a path
        torch.nn.init.normal_(p, std=0.2)
    image = build_model("vit_digits_tiny", num_classes=5, ffn_num=4, img_size=8).eval()
    image.load_state_dict({k: v for k, v in video.state_dict().items()
                           if not k.startswith(("attentive_blocks.", "query_token"))})
    clips = torch.randn(2, 3, 3, 8, 8)
    logits, aux = video(clips)
    frames = clips.transpose(1, 2).flatten(0, 1)
    tokens, frame_aux = image.forward_features(frames)
    assert torch.equal(aux["token_select"], frame_aux["token_select"]) and aux["token_select"].shape[0] == 6
    kv = tokens.reshape(2, -1, tokens.shape[-1])  # [B, T*N, C]
    pool = video.attentive_blocks
    attn = pool.cross_attn
    q = F.layer_norm(video.query_token.expand(2, -1, -1), (48,), pool.norm_q.weight, pool.norm_q.bias, 1e-6)
    q = q @ attn.q.weight.T + attn.q_bias
    k = F.layer_norm(kv, (48,), pool.norm_k.weight, pool.norm_k.bias, 1e-6) @ attn.k.weight.T
    v = F.layer_norm(kv, (48,), pool.norm_v.weight, pool.norm_v.bias, 1e-6) @ attn.v.weight.T + attn.v_bias
    heads = [slice(0, 24), slice(24, 48)]
    out = torch.cat([((q[..., h] @ k[..., h].transpose(1, 2)) / 24 ** 0.5).softmax(-1) @ v[..., h] for h in heads],
                    dim=-1)
    expected = video.head(attn.proj(out)[:, 0])
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    # the complete pass applies no mask; per-frame FLOPs feed the per-clip figure
    complete, _ = video(clips, complete_model=True)
    assert complete.shape == logits.shape
    per_frame = sample_flops(video, aux)
    assert clip_flops(video, per_frame, 3).shape == (2,)


def test_moe_adapter_trains_in_the_video_model():
    model = _tiny(moe_experts=3, moe_router="sample").train()
    logits, aux = model(torch.randn(2, 3, 2, 8, 8))
    (logits.sum() + aux["token_logits"].sum()).backward()
    grads = [p.grad for n, p in model.named_parameters() if "adaptmlp.router" in n]
    assert len(grads) == 8 and all(g is not None for g in grads)
    assert model.attentive_blocks.cross_attn.q_bias.grad is not None and model.query_token.grad is not None


def test_multi_view_evaluation_averages_the_logits_of_the_views():
    model = _tiny().eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    views = torch.randn(4, 3, 3, 2, 8, 8)  # 4 videos x 3 views of 2-frame clips
    targets = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        mean_logits = torch.stack([model(views[:, v])[0] for v in range(3)], dim=1).mean(dim=1)
        _, aux = model(views.flatten(0, 1))
    loader = [(views[:2], targets[:2]), (views[2:], targets[2:])]
    stats = evaluate_video(model, loader, torch.device("cpu"))
    expected_acc = 100.0 * (mean_logits.argmax(1) == targets).float().mean().item()
    assert stats["acc1"] == pytest.approx(expected_acc)
    assert stats["loss"] == pytest.approx(F.cross_entropy(mean_logits, targets).item(), rel=1e-5)
    assert (stats["samples"], stats["views"], stats["frames"]) == (4, 3, 24)
    per_frame = sample_flops(model, aux)
    assert stats["flops"] == pytest.approx(per_frame.mean().item())
    assert stats["rate"] == pytest.approx(stats["flops"] / 17.6)
    assert stats["video_flops"] == pytest.approx(3 * stats["clip_flops"])
    assert stats["clip_flops"] == pytest.approx(clip_flops(model, per_frame, 2).mean().item())
    layer_rates = aux["token_select"].float().mean(dim=(0, 2, 3))
    assert stats["layer_rates"] == pytest.approx(layer_rates.tolist())
    assert stats["activation_rate"] == pytest.approx(aux["token_select"].float().mean().item())
