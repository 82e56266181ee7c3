"""Architecture ``projected``: a frozen timm backbone with trainable heads as D, any architecture's G."""

import pytest
import torch
from conftest import run_cli, tiny_recipe, write_recipe

from ganforge import config, registry
from ganforge.errors import PluginError
from ganforge.run import run

MODEL = {"type": "projected", "generator": {"type": "dcgan", "resolution": 16, "channels": 3, "latent_dim": 16,
                                            "g_width": 8},
         "backbone": "tf_efficientnet_lite0", "random_init": True, "input_size": 32, "width": 8}


def test_d_sees_through_a_frozen_backbone_and_passes_gradients_to_the_image():
    arch = registry.build("architecture", MODEL)
    D = arch.build_discriminator()
    assert all(not p.requires_grad for p in D.backbone.parameters())
    assert len(D.heads) == 4 and all(p.requires_grad for p in D.heads.parameters())
    x = (torch.rand(3, 3, 16, 16) * 2 - 1).requires_grad_(True)
    out = D(x)
    assert out.shape == (3,)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert g.abs().sum() > 0  # G is trained through the frozen network
    D.train()
    assert not D.backbone.training  # pretrained batch-norm statistics are kept in both phases


def test_training_moves_the_heads_and_never_the_backbone(tmp_path, data_cache):
    recipe = config.validate(tiny_recipe(tmp_path, data_cache, model=MODEL, **{"train.kimg": 0.048}))
    trainer = run("<test>", [], recipe=recipe)
    task = trainer.task
    fresh = registry.build("architecture", MODEL).build_discriminator()
    trained = task.D_raw
    same = [torch.equal(a, b) for a, b in zip(fresh.backbone.state_dict().values(),
                                               trained.backbone.state_dict().values())]
    assert all(same)  # backbone weights and batch-norm statistics untouched after G and D phases
    assert any(not torch.equal(a, b) for a, b in zip(fresh.heads.parameters(), trained.heads.parameters()))
    n_opt = sum(p.numel() for g in task.opt_D.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in trained.heads.parameters())  # only the heads are optimised


def test_missing_weights_are_a_one_line_error(tmp_path, data_cache):
    model = {**MODEL, "random_init": False}
    recipe = tiny_recipe(tmp_path, data_cache, model=model)
    out = run_cli("run", write_recipe(tmp_path / "r.yaml", recipe), env={"HF_HOME": str(tmp_path / "hf")})
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert "model 'projected': no weights" in line and "model.weights" in line and "Traceback" not in out.stderr


def test_bad_options_name_the_option():
    with pytest.raises(PluginError, match="generator must be an architecture block"):
        registry.build("architecture", {**MODEL, "generator": "dcgan"})
    with pytest.raises(PluginError, match="unknown timm model 'efficientnet_lyte0'"):
        registry.build("architecture", {**MODEL, "backbone": "efficientnet_lyte0"})
    with pytest.raises(PluginError, match="has 5 feature scales, scales=6"):
        registry.build("architecture", {**MODEL, "scales": 6})
