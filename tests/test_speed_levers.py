"""model.channels_last / model.compile / model.optimizer.fused: speed levers that training
honours (STCNNModule.configure_model), so what stn-bench measures is what stn-train runs.
They must change speed only: the loss and the update stay the same within float tolerance."""

from __future__ import annotations

import functools

import pytest
import torch

from stnrepro.config import compose_config
from stnrepro.errors import ConfigError
from stnrepro.lightning.module import STCNNModule


def _module(**kw) -> STCNNModule:
    torch.manual_seed(0)
    opt = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, **kw.pop("opt", {}))
    module = STCNNModule(
        num_classes=4, optimizer=opt, image_size=32, crop_size=16, num_transformers=2, **kw
    )
    module.configure_model()
    return module.train()


def _loss_after_one_step(module: STCNNModule) -> tuple[float, float]:
    """(loss, loss after one SGD step) on a fixed batch, through the module's own hooks."""
    gen = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(4, 3, 32, 32, generator=gen), "label": torch.arange(4)}
    batch = module.on_after_batch_transfer(batch, 0)
    opt = module.configure_optimizers()
    torch.manual_seed(2)  # same dropout mask in both runs
    loss = module._step(batch, "train")[0]
    loss.backward()
    opt.step()
    torch.manual_seed(2)
    return loss.item(), module._step(batch, "train")[0].item()


def test_channels_last_gives_the_same_loss_and_update():
    module = _module(channels_last=True)
    conv = next(p for p in module.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    batch = module.on_after_batch_transfer({"image": torch.randn(2, 3, 32, 32)}, 0)
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    ref = _loss_after_one_step(_module())
    assert _loss_after_one_step(module) == pytest.approx(ref, rel=1e-4, abs=1e-5)


def test_fused_sgd_gives_the_same_update():
    ref = _loss_after_one_step(_module())
    fused = _module(opt={"fused": True})
    assert fused.configure_optimizers().defaults["fused"] is True
    assert _loss_after_one_step(fused) == pytest.approx(ref, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"channels_last": "yes"}, "model.channels_last='yes'"),
        ({"compile": "fast"}, "model.compile='fast'"),
        ({"compile": "default", "compile_backend": "nope"}, "model.compile_backend='nope'"),
        (
            {"compile": "reduce-overhead", "compile_backend": "aot_eager"},
            "model.compile='reduce-overhead'",
        ),
    ],
)
def test_bad_lever_values_are_refused_naming_the_key(kw, key):
    with pytest.raises(ConfigError, match=key.replace("(", r"\(")) as info:
        _module(**kw)
    assert "\n" not in str(info.value)


def test_the_levers_are_config_keys_off_by_default():
    model = compose_config().model
    assert (model.channels_last, model.compile, model.optimizer.fused) == (False, None, None)
    cfg = compose_config(["model.channels_last=true", "model.compile=max-autotune"])
    assert (cfg.model.channels_last, cfg.model.compile) == (True, "max-autotune")


def test_configure_model_applies_the_levers_once():
    module = _module(compile="default", compile_backend="eager")
    compiled = [t._compiled_call_impl for t in module.net.parts]
    assert all(c is not None for c in compiled)
    assert module.net.classifier._compiled_call_impl is None  # trunks only
    module.configure_model()  # trainer.test after trainer.fit calls it again
    assert [t._compiled_call_impl for t in module.net.parts] == compiled
    assert set(module.state_dict()) == set(_module().state_dict())  # checkpoints unchanged


@pytest.mark.slow
def test_compiled_trunks_give_the_same_loss():
    ref = _loss_after_one_step(_module())
    torch._dynamo.reset()
    got = _loss_after_one_step(_module(compile="default", compile_backend="aot_eager"))
    torch._dynamo.reset()
    assert got == pytest.approx(ref, rel=1e-4, abs=1e-5)
