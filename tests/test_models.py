"""Model zoo: every registered model trains on CPU at the data sets' input sizes; registry errors; DDP; EffSwin
weight transfer; model_info."""

from __future__ import annotations

import inspect
import math
import socket

import pytest
import torch
from torch import nn

from hpcvit.models import build_model, check_model_kwargs, check_model_name, list_models, model_entry

INPUTS = [(2, 32), (3, 125)]  # electron/photon crops; quark/gluon and top jet images
REGRESSION_MODELS = ["cnn_small", "deepvit", "resnet15", "vit_seed"]  # mass regression: 8 x 125 x 125
DDP_MODELS = ["vit_seed", "swin_tiny", "coatnet_0", "resnet15"]  # one per family: vit, windowed, hybrid, cnn


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Two cores shared with other jobs: one thread keeps the timings steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train_step(name: str, chans: int, size: int, loss_fn: nn.Module, target: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = build_model(name, chans, size)
    model.train()
    x = torch.randn(2, chans, size, size)
    out = model(x)
    assert out.shape == (2, 1), f"{name}: output {tuple(out.shape)}"
    loss = loss_fn(out, target)
    assert torch.isfinite(loss), f"{name}: loss {loss.item()}"
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    no_grad = [n for n, p in params if p.grad is None]
    assert not no_grad, f"{name}: parameters without gradient (unused in forward): {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for _, p in params), f"{name}: non-finite gradient"
    assert sum(p.grad.abs().sum().item() for _, p in params) > 0, f"{name}: all gradients are zero"


@pytest.mark.parametrize("chans,size", INPUTS, ids=[f"{c}x{s}x{s}" for c, s in INPUTS])
@pytest.mark.parametrize("name", list_models())
def test_forward_backward_classification(name: str, chans: int, size: int) -> None:
    _train_step(name, chans, size, nn.BCEWithLogitsLoss(), torch.tensor([[0.0], [1.0]]))


@pytest.mark.parametrize("name", REGRESSION_MODELS)
def test_forward_backward_mass_regression(name: str) -> None:
    _train_step(name, 8, 125, nn.MSELoss(), torch.tensor([[0.4], [1.3]]))


@pytest.mark.parametrize("name", list_models())
def test_every_model_takes_scalar_inputs_beside_the_image(name: str) -> None:
    from hpcvit.models.fusion import FUSION_WIDTH, ScalarFusion

    torch.manual_seed(0)
    model = ScalarFusion(build_model(name, 2, 32, FUSION_WIDTH), n_scalars=2)
    model.train()
    out = model(torch.randn(2, 2, 32, 32), torch.randn(2, 2))
    assert out.shape == (2, 1)
    nn.BCEWithLogitsLoss()(out, torch.tensor([[0.0], [1.0]])).backward()
    assert model.head[0].weight.grad[:, FUSION_WIDTH:].abs().sum() > 0, f"{name}: the scalars reach the head"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.image_model.parameters())


# ---------------------------------------------------------------------------------------------------- registry


def test_registry_builders_share_the_signature() -> None:
    from hpcvit.models._registry import get_builder

    for name in list_models():
        assert model_entry(name).family in {"vit", "windowed", "hybrid", "cnn"}, name
        params = list(inspect.signature(get_builder(name)).parameters.values())
        assert [p.name for p in params[:3]] == ["in_chans", "img_size", "num_outputs"], name
        assert params[2].default == 1, name
        assert all(p.default is not inspect.Parameter.empty for p in params[3:]), f"{name}: kwargs need defaults"


def test_new_models_registered_with_families() -> None:
    assert model_entry("deepvit").family == "vit"
    assert model_entry("resnet15").family == "cnn"
    assert model_entry("effswin").family == "hybrid"
    assert list_models("resnet*") == ["resnet15", "resnet18"]
    assert list_models("vit") == ["davit_tiny", "deepvit", "maxvit_tiny", "vit_seed", "vit_small", "vit_tiny"], \
        "a plain word matches names holding it"
    assert list_models("net_b0") == ["efficientnet_b0"] and list_models("nothing") == []


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'swin_tinny'.*did you mean swin_tiny"):
        check_model_name("swin_tinny")
    with pytest.raises(ValueError, match=r"did you mean .*resnet15"):
        build_model("resnet16", 2, 32)
    with pytest.raises(ValueError, match=r"unknown model 'zzz'") as err:
        check_model_name("zzz")
    assert "did you mean" not in str(err.value)


def test_unknown_kwarg_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"model 'deepvit' takes no argument 'depht'; it takes: .*depth"):
        check_model_kwargs("deepvit", {"depht": 2})
    with pytest.raises(ValueError, match=r"takes no argument 'window'.*window_size"):
        build_model("effswin", 2, 32, window=4)
    with pytest.raises(ValueError, match=r"model.kwargs.img_size is set by hpcvit"):
        check_model_kwargs("resnet15", {"img_size": 64})
    check_model_kwargs("deepvit", {"depth": 2, "dim": 32, "heads": 4})  # accepted
    model = build_model("deepvit", 2, 32, depth=2, dim=32, heads=4)
    assert len(model.layers) == 2 and model.layers[0][0].heads == 4


# ---------------------------------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, names: list[str], out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        for name in names:
            torch.manual_seed(1000 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
            model = build_model(name, 2, 32)
            ddp = DDP(model)
            before = {k: v.detach().clone() for k, v in model.named_parameters()}
            gen = torch.Generator().manual_seed(2000 + rank)  # different data per rank
            x = torch.randn(4, 2, 32, 32, generator=gen)
            y = torch.randint(0, 2, (4, 1), generator=gen).float()
            opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
            nn.BCEWithLogitsLoss()(ddp(x), y).backward()
            opt.step()
            after = {k: v.detach().clone() for k, v in model.named_parameters()}
            torch.save({"before": before, "after": after}, f"{out_dir}/{name}-rank{rank}.pt")
            dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ddp_two_ranks_keep_parameters_in_sync(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), DDP_MODELS, str(tmp_path)), nprocs=2, join=True)
    for name in DDP_MODELS:
        r0, r1 = (torch.load(tmp_path / f"{name}-rank{r}.pt", weights_only=True) for r in (0, 1))
        for key in r0["before"]:  # DDP's construction broadcast rank 0's weights
            assert torch.equal(r0["before"][key], r1["before"][key]), f"{name}: {key} differs before the step"
        for key in r0["after"]:
            assert torch.allclose(r0["after"][key], r1["after"][key], rtol=1e-5, atol=1e-6), \
                f"{name}: {key} differs between ranks after the step"
        changed = [k for k in r0["after"] if not torch.equal(r0["after"][k], r0["before"][k])]
        assert len(changed) >= 0.5 * len(r0["after"]), f"{name}: only {len(changed)} tensors moved"


# ---------------------------------------------------------------------------------------------------- EffSwin


def _effswin_and_swin(chans: int, size: int):
    torch.manual_seed(1)
    effswin = build_model("effswin", chans, size)
    torch.manual_seed(2)
    swin = build_model("swin_tiny", chans, size)  # PadTo(timm SwinTransformer): keys carry "inner."
    return effswin, swin


def test_load_swin_stages_copies_weights(tmp_path) -> None:
    from hpcvit.models.effswin import load_swin_stages

    effswin, swin = _effswin_and_swin(3, 125)  # both use window 4 at 125 px (padded to 128): shapes match
    inner = swin.inner
    pairs = [(effswin.stage3, inner.layers[2]), (effswin.stage4, inner.layers[3]), (effswin.norm, inner.norm)]
    assert any(not torch.equal(a, b) for m, s in pairs for a, b in zip(m.parameters(), s.parameters()))
    cnn_before = [p.detach().clone() for p in effswin.cnn.parameters()]
    head_before = effswin.head.fc.weight.detach().clone()

    loaded = load_swin_stages(effswin, swin)

    for mine, theirs in pairs:
        names = [n for n, _ in mine.named_parameters()]
        assert names == [n for n, _ in theirs.named_parameters()]
        for (n, a), b in zip(mine.named_parameters(), theirs.parameters()):
            assert torch.equal(a, b), n
            assert a.data_ptr() != b.data_ptr()  # copied, not shared
    assert sum(1 for n in loaded if n.startswith(("stage3.", "stage4.", "norm."))) == len(loaded)
    assert len(loaded) == sum(1 for m, _ in pairs for _ in m.parameters())
    assert all(torch.equal(a, b) for a, b in zip(effswin.cnn.parameters(), cnn_before))  # CNN untouched
    assert torch.equal(effswin.head.fc.weight, head_before)  # head kept unless include_head

    # A checkpoint file in the timm 0.5 layout of the GSoC study (merging at the end of a stage), nested under
    # "model" with DDP's "module." prefix, loads into a fresh model with the same result.
    old = {}
    for key, value in inner.state_dict().items():
        if key.startswith("layers.") and ".downsample." in key:
            stage, tail = key[len("layers."):].split(".", 1)
            key = f"layers.{int(stage) - 1}.{tail}"
        old["module." + key.replace("head.fc.", "head.")] = value
    torch.save({"model": old, "epoch": 50}, tmp_path / "swin_stage1.pt")
    torch.manual_seed(3)
    fresh = build_model("effswin", 3, 125, swin_checkpoint=str(tmp_path / "swin_stage1.pt"))
    for (n, a), b in zip(fresh.stage3.named_parameters(), inner.layers[2].parameters()):
        assert torch.equal(a, b), n
    for (n, a), b in zip(fresh.stage4.named_parameters(), inner.layers[3].parameters()):
        assert torch.equal(a, b), n


def test_load_swin_stages_resizes_windows_and_rejects_non_swin() -> None:
    from hpcvit.models.effswin import load_swin_stages

    effswin, swin = _effswin_and_swin(2, 32)  # swin_tiny uses window 1 at 32 px, EffSwin's stage 3 window 2
    load_swin_stages(effswin, swin.state_dict(), include_head=True)
    table = effswin.stage3.blocks[0].attn.relative_position_bias_table
    assert table.shape == (9, 12)  # (2 * 2 - 1)^2 positions x 12 heads, resized from swin_tiny's 1 x 12
    assert torch.equal(effswin.stage3.blocks[0].mlp.fc1.weight, swin.inner.layers[2].blocks[0].mlp.fc1.weight)
    assert torch.equal(effswin.head.fc.weight, swin.inner.head.fc.weight)
    out = effswin(torch.randn(2, 2, 32, 32))
    assert out.shape == (2, 1) and torch.isfinite(out).all()

    with pytest.raises(ValueError, match="no Swin-T weights"):
        load_swin_stages(effswin, build_model("vit_seed", 2, 32))
    with pytest.raises(TypeError, match="holds no EffSwin"):
        load_swin_stages(build_model("resnet15", 2, 32), swin)


# ---------------------------------------------------------------------------------------------------- model_info


@pytest.mark.parametrize("name,chans,size", [("resnet15", 3, 125), ("deepvit", 2, 32), ("effswin", 2, 32),
                                             ("vit_tiny", 2, 32)])
def test_model_info_params_and_flops(name: str, chans: int, size: int) -> None:
    from hpcvit.models.info import model_info

    info = model_info(name, chans, size)
    expected = sum(p.numel() for p in build_model(name, chans, size).parameters())
    assert info["ok"] and info["error"] is None
    assert info["family"] == model_entry(name).family and info["input"] == f"{chans}x{size}x{size}"
    assert math.isclose(info["params_m"] * 1e6, expected, rel_tol=0.01)
    assert info["gflops"] > 0


def test_model_info_counts_attention_exactly() -> None:
    """vit_seed at 2x32x32: the FLOPs (2 per multiply-add) written out; attention runs through the CPU fused
    kernel and nn.MultiheadAttention, which the counter only sees with the help info.py gives it."""
    from hpcvit.models.info import model_info

    tokens, dim, depth, mlp = 65, 64, 4, 128  # 8x8 patches of 4 px + cls; vit_seed defaults
    patch = 2 * 64 * dim * (2 * 4 * 4)
    block = 2 * tokens * dim * 3 * dim + 2 * tokens * dim * dim + 2 * 2 * tokens * tokens * dim \
        + 2 * 2 * tokens * dim * mlp
    assert model_info("vit_seed", 2, 32)["gflops"] * 1e9 == pytest.approx(patch + depth * block + 2 * dim)


def test_model_info_reports_unsupported_input() -> None:
    from hpcvit.models.info import model_info

    info = model_info("resnet15", 2, 4)  # 4 px: the 7x7 stem leaves nothing
    assert info["ok"] is False and info["gflops"] is None and info["error"]
    assert info["params"] is not None  # it built; the forward pass failed
    with pytest.raises(ValueError, match="did you mean"):
        model_info("resnet151", 2, 32)


def test_models_command(capsys) -> None:
    import argparse
    import json

    from hpcvit.models.info import add_parser

    parser = argparse.ArgumentParser(prog="hpcvit")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["models", "resnet1*", "--in-chans", "3", "--img-size", "125", "--format", "json"])
    assert args.func(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["resnet15", "resnet18"]
    assert all(r["ok"] and r["input"] == "3x125x125" for r in rows)
    assert rows[0]["supports"] == {"2x32x32": True, "3x125x125": True}

    args = parser.parse_args(["models", "resnet15"])
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert "resnet15" in table and "GFLOPs 2x32x32" in table and "3x125x125" in table

    args = parser.parse_args(["models", "nothing*"])
    assert args.func(args) == 1
